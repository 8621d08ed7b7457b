"""RabbitMQ names, queue arguments and URL options: pure functions, no I/O.

Every queue an app queue `q` needs (prefix `ebbtide`):

    ebbtide.q                 durable, x-max-priority 9: the ready tasks
    ebbtide.q.wait.<ms>       quorum, x-message-ttl <ms>, dead-letters into ebbtide.q
                              at-least-once: delayed sends and retries wait here, never
                              in a worker (`ebbtide.q.delay.<ms>`: the classic ones of
                              older versions, still read and drained)
    ebbtide.q.dead            durable: the DLQ (the body carries the error and traceback)
    ebbtide.q.lost            quorum: deliveries a lost connection gave back, run one at
                              a time (x-delivery-count is how often a worker lost them)
    ebbtide.worker.<id>       durable, x-max-length 1, x-expires: the worker's latest heartbeat

and one per rate-limited task, shared by all its queues (see rate.py):

    ebbtide.rate.<task>.<limit>.<window_ms>   x-max-length, x-message-ttl: rate tokens

plus one exchange per prefix, which producers publish wake-ups to (see wake_exchange):

    ebbtide.wake              fanout, durable: the body is a queue name that got tasks
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pika

from ...message import MAX_PRIORITY, RESERVED_INFIXES

DELAY_QUEUE_SLACK_MS = 600_000  # an idle delay queue outlives its last message by this
READY_MS_HEADER = "x-ebbtide-ready-ms"
RECOVERIES_HEADER = "x-ebbtide-recoveries"  # losses counted before this copy was published
DELIVERY_COUNT_HEADER = "x-delivery-count"  # a quorum queue's count of returns
REASON_HEADER = "x-ebbtide-reason"
DIED_AT_HEADER = "x-ebbtide-died-at-ms"


@dataclass(frozen=True)
class Options:
    """Ebbtide's own query parameters on an amqp:// URL (pika never sees them)."""

    amqp_url: str
    management_url: str | None  # http(s)://user:pass@host:port, None = not used
    max_redeliveries: int  # losses (see lost.py) before the consumer itself dead-letters
    # `declare=passive`: the producer only checks that an app queue's ready, dead and lost
    # queues exist (the managed broker pre-declares them), since declaring one with a
    # dead-letter exchange needs the read right that would let it claim (docs/security.md).
    passive_declare: bool = False


def parse_options(url: str) -> Options:
    """`amqp://u:p@host:5672/vhost?management_port=15672&max_redeliveries=5&declare=passive`.

    The management URL defaults to the AMQP host and credentials, over http on port
    15672, or over https on 15671 for `amqps://` (TLS on AMQP means TLS on the API too);
    env EBBTIDE_RABBITMQ_MANAGEMENT_URL overrides it ('' disables it).
    """
    parts = urlsplit(url)
    ours = {"management_port", "management_url", "max_redeliveries", "declare"}
    query = parse_qsl(parts.query, keep_blank_values=True)
    mine = {k: v for k, v in query if k in ours}
    pika_query = urlencode([(k, v) for k, v in query if k not in ours])
    amqp_url = urlunsplit(parts._replace(query=pika_query))
    management = os.environ.get("EBBTIDE_RABBITMQ_MANAGEMENT_URL", mine.get("management_url"))
    if management is None:
        tls = parts.scheme.lower() == "amqps"
        port = mine.get("management_port", "15671" if tls else "15672")
        if not port.isdigit():
            raise ValueError(f"bad management_port {port!r} in the broker URL: a port number")
        auth = parts.netloc.rpartition("@")[0]
        host = parts.hostname or "localhost"
        web = "https" if tls else "http"
        management = f"{web}://{auth + '@' if auth else ''}{host}:{port}"
    redeliveries = mine.get("max_redeliveries", "5")
    if not redeliveries.isdigit() or int(redeliveries) < 1:
        raise ValueError(f"bad max_redeliveries {redeliveries!r} in the broker URL: an int >= 1")
    declare = mine.get("declare", "active")
    if declare not in ("active", "passive"):
        raise ValueError(f"bad declare {declare!r} in the broker URL: active or passive")
    return Options(amqp_url, management or None, int(redeliveries), declare == "passive")


def vhost_of(url: str) -> str:
    from urllib.parse import unquote

    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def ready_queue(prefix: str, queue: str) -> str:
    return f"{prefix}.{queue}"


def dead_queue(prefix: str, queue: str) -> str:
    return f"{prefix}.{queue}.dead"


def delay_queue(prefix: str, queue: str, delay_ms: int) -> str:
    return f"{prefix}.{queue}.wait.{delay_ms}"


def lost_queue(prefix: str, queue: str) -> str:
    return f"{prefix}.{queue}.lost"


def wake_exchange(prefix: str) -> str:
    """Producers publish the queue's name here when they send to it (at most once a
    second per queue and producer); the operator binds a private queue to it, so a
    queue scaled to zero is woken at once instead of at the next poll."""
    return f"{prefix}.wake"


WAKE_ARGS = {"x-message-ttl": 10_000, "x-max-length": 10_000}  # the operator's wake queue


def worker_queue(prefix: str, worker_id: str) -> str:
    return f"{prefix}.worker.{worker_id}"


def ready_args(prefix: str, queue: str) -> dict:
    # Anything RabbitMQ itself dead-letters (a reject, an expiry) lands in our DLQ too.
    return {
        "x-max-priority": MAX_PRIORITY,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_queue(prefix, queue),
    }


def delay_args(prefix: str, queue: str, delay_ms: int) -> dict:
    """A quorum queue: a classic one dead-letters at most once (a crash between its
    expiry and the ready queue's write loses the task); a quorum queue with the
    at-least-once strategy keeps the message until the ready queue confirmed it, which
    RabbitMQ allows only with `x-overflow: reject-publish`."""
    return {
        "x-queue-type": "quorum",
        "x-message-ttl": delay_ms,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": ready_queue(prefix, queue),
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-expires": delay_ms + DELAY_QUEUE_SLACK_MS,
    }


def lost_args() -> dict:
    """Quorum: its x-delivery-count says how often a worker holding the task alone was
    lost, kept by RabbitMQ across crashes (see lost.py)."""
    return {"x-queue-type": "quorum", "x-overflow": "reject-publish"}


@dataclass(frozen=True)
class LinkTuning:
    """A worker connection's timeouts, derived from the lease (see link_tuning)."""

    heartbeat_s: int  # AMQP heartbeat: both sides drop a silent peer after about this
    ping_s: float  # the worker's own round trip on an idle link, and its deadline
    socket_timeout_s: float
    stack_timeout_s: float
    tcp_options: dict


def tuned(params: pika.URLParameters, tuning: LinkTuning, url: str) -> pika.URLParameters:
    """`params` with the tuning applied, except what the URL sets itself."""
    given = {k for k, _v in parse_qsl(urlsplit(url).query)}
    ssl_options, params.ssl_options = params.ssl_options, None  # an SSLContext cannot be copied
    try:
        out = copy.deepcopy(params)
    finally:
        params.ssl_options = ssl_options
    out.ssl_options = ssl_options
    if "heartbeat" not in given:
        out.heartbeat = tuning.heartbeat_s
    if "socket_timeout" not in given:
        out.socket_timeout = tuning.socket_timeout_s
    if "stack_timeout" not in given:
        out.stack_timeout = tuning.stack_timeout_s
    if "tcp_options" not in given:
        out.tcp_options = dict(tuning.tcp_options)
    if "connection_attempts" not in given:
        out.connection_attempts = 1  # the supervisor retries, with its own backoff
    return out


def link_tuning(lease_ms: int) -> LinkTuning:
    """A lost worker (frozen, blackholed) must be noticed within its lease, and its
    deliveries given back by RabbitMQ a few seconds after: heartbeat a sixth of the
    lease, 1-5 s. The worker pings its own link at that period too (pika alone only
    notices a missed heartbeat after timeout + 5 s)."""
    lease_s = max(0.5, lease_ms / 1000)
    heartbeat = max(1, min(5, int(lease_s / 6)))
    return LinkTuning(
        heartbeat_s=heartbeat,
        ping_s=float(heartbeat),
        socket_timeout_s=max(2.0, min(10.0, lease_s / 3)),
        stack_timeout_s=max(5.0, min(15.0, lease_s / 2)),
        tcp_options={
            "TCP_KEEPIDLE": heartbeat,
            "TCP_KEEPINTVL": 1,
            "TCP_KEEPCNT": 3,
        },  # no TCP_USER_TIMEOUT: a memory alarm's zero window is not a dead link
    )


def worker_args(ttl_ms: int) -> dict:
    """A heartbeat queue is durable, as RabbitMQ 4.x wants of shared queues (it refuses
    non-durable non-exclusive ones by default), yet short-lived: x-expires removes it
    once its worker stops declaring it, and its messages are transient."""
    return {"x-queue-type": "classic", "x-max-length": 1, "x-expires": max(1000, ttl_ms)}


def bucket_delay_ms(delay_ms: int) -> int:
    """Round a delay UP to two significant digits (1234 -> 1300 ms): jittered retries
    share a few delay queues instead of one each, and no task ever runs early."""
    if delay_ms <= 100:
        return max(1, delay_ms)
    step = 10 ** (len(str(delay_ms)) - 2)
    return -(-delay_ms // step) * step


@dataclass(frozen=True)
class QueueName:
    """What an `ebbtide.*` queue name means."""

    kind: str  # ready | delay | dead | lost | worker | rate
    queue: str  # the app queue (worker: the worker id; rate: the task name)


_RATE_QUEUE = re.compile(r"rate\.(.+)\.\d+\.\d+")


def classify(prefix: str, name: str) -> QueueName | None:
    head = prefix + "."
    if not name.startswith(head):
        return None
    rest = name[len(head) :]
    if rest.startswith("worker."):
        return QueueName("worker", rest[len("worker.") :])
    if rest.endswith(".dead"):
        return QueueName("dead", rest[: -len(".dead")])
    if rest.endswith(".lost"):
        return QueueName("lost", rest[: -len(".lost")])
    for infix in RESERVED_INFIXES:
        base, sep, ms = rest.rpartition(infix)
        if sep and ms.isdigit():
            return QueueName("delay", base)
    if rate := _RATE_QUEUE.fullmatch(rest):
        # rate.<task>.<limit>.<window_ms> (an app queue of that very shape would be
        # taken for one, and left out of the statistics)
        return QueueName("rate", rate.group(1))
    return QueueName("ready", rest)
