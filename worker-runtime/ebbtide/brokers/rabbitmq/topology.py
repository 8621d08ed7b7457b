"""RabbitMQ names, queue arguments and URL options: pure functions, no I/O.

Every queue an app queue `q` needs (prefix `ebbtide`):

    ebbtide.q                 durable, x-max-priority 9: the ready tasks
    ebbtide.q.delay.<ms>      durable, x-message-ttl <ms>, dead-letters into ebbtide.q:
                              delayed sends and retries wait here, never in a worker
    ebbtide.q.dead            durable: the DLQ (the body carries the error and traceback)
    ebbtide.worker.<id>       durable, x-max-length 1, x-expires: the worker's latest heartbeat

and one per rate-limited task, shared by all its queues (see rate.py):

    ebbtide.rate.<task>.<limit>.<window_ms>   x-max-length, x-message-ttl: rate tokens
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ...message import MAX_PRIORITY

DELAY_QUEUE_SLACK_MS = 600_000  # an idle delay queue outlives its last message by this
READY_MS_HEADER = "x-ebbtide-ready-ms"
REDELIVERIES_HEADER = "x-ebbtide-redeliveries"
REASON_HEADER = "x-ebbtide-reason"
DIED_AT_HEADER = "x-ebbtide-died-at-ms"


@dataclass(frozen=True)
class Options:
    """Ebbtide's own query parameters on an amqp:// URL (pika never sees them)."""

    amqp_url: str
    management_url: str | None  # http://user:pass@host:port, None = not used
    max_redeliveries: int  # unsettled deliveries before a task is dead-lettered


def parse_options(url: str) -> Options:
    """`amqp://u:p@host:5672/vhost?management_port=15672&max_redeliveries=5`.

    The management URL defaults to the AMQP host and credentials on port 15672;
    env EBBTIDE_RABBITMQ_MANAGEMENT_URL overrides it ('' disables it).
    """
    parts = urlsplit(url)
    ours = {"management_port", "management_url", "max_redeliveries"}
    query = parse_qsl(parts.query, keep_blank_values=True)
    mine = {k: v for k, v in query if k in ours}
    pika_query = urlencode([(k, v) for k, v in query if k not in ours])
    amqp_url = urlunsplit(parts._replace(query=pika_query))
    management = os.environ.get("EBBTIDE_RABBITMQ_MANAGEMENT_URL", mine.get("management_url"))
    if management is None:
        port = mine.get("management_port", "15672")
        if not port.isdigit():
            raise ValueError(f"bad management_port {port!r} in the broker URL: a port number")
        auth = parts.netloc.rpartition("@")[0]
        host = parts.hostname or "localhost"
        management = f"http://{auth + '@' if auth else ''}{host}:{port}"
    redeliveries = mine.get("max_redeliveries", "5")
    if not redeliveries.isdigit() or int(redeliveries) < 1:
        raise ValueError(f"bad max_redeliveries {redeliveries!r} in the broker URL: an int >= 1")
    return Options(amqp_url, management or None, int(redeliveries))


def vhost_of(url: str) -> str:
    from urllib.parse import unquote

    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def ready_queue(prefix: str, queue: str) -> str:
    return f"{prefix}.{queue}"


def dead_queue(prefix: str, queue: str) -> str:
    return f"{prefix}.{queue}.dead"


def delay_queue(prefix: str, queue: str, delay_ms: int) -> str:
    return f"{prefix}.{queue}.delay.{delay_ms}"


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
    return {
        "x-message-ttl": delay_ms,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": ready_queue(prefix, queue),
        "x-expires": delay_ms + DELAY_QUEUE_SLACK_MS,
        "x-max-priority": MAX_PRIORITY,
    }


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

    kind: str  # ready | delay | dead | worker | rate
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
    base, sep, ms = rest.rpartition(".delay.")
    if sep and ms.isdigit():
        return QueueName("delay", base)
    if rate := _RATE_QUEUE.fullmatch(rest):
        # rate.<task>.<limit>.<window_ms> (an app queue of that very shape would be
        # taken for one, and left out of the statistics)
        return QueueName("rate", rate.group(1))
    return QueueName("ready", rest)
