"""Global rate limits on RabbitMQ: a sliding window that the broker itself enforces.

`@app.task(rate="100/s")` must hold across every worker. RabbitMQ has no shared counter
(no INCR, no scripts), but a queue with a length limit is one, so each rate-limited task
gets a token queue:

    ebbtide.rate.<task>.<limit>.<window_ms>   classic, durable, transient messages
        x-max-length  = limit            at most `limit` tokens alive at once
        x-overflow    = reject-publish   a publish into a full queue is nacked
        x-message-ttl = window_ms        each token lives exactly one window
        x-expires     = window_ms+10 min an unused queue goes away, never before its tokens

Taking a token is publishing an empty message to it on a channel in confirm mode.
RabbitMQ acks the publish while the queue holds fewer than `limit` messages, that is
while fewer than `limit` tokens were taken in the last `window_ms`, and nacks it
otherwise. Nobody consumes the queue: tokens leave only by expiring, oldest first (all
share the queue's TTL, so the head always expires first), which makes it a sliding
window decided in one place, the queue's process, for every worker at once, at one
round trip per token and without Redis. Measured on RabbitMQ 3.10, a token leaves about
2 ms after its window ends (see docs/rabbitmq.md, "Rate limits").

Why these choices:

* The limit and the window are in the name, so a changed `rate=` declares a new queue
  instead of failing on the old one's arguments (PRECONDITION_FAILED); the old one expires.
* Durable queue, transient tokens: RabbitMQ 4.3 refuses non-durable non-exclusive queues
  by default (`transient_nonexcl_queues`), and an exclusive one could not be shared. The
  tokens themselves do not survive a broker restart: the window starts empty again.
* `x-queue-type: classic`, whatever the vhost's default queue type.
* Publishing does not count as using a queue for `x-expires`, so a queue is declared once
  per connection and again every minute while in use (publish.Declared).
* Its own channel on the worker's publishing connection (never the consuming one): a channel error here (a policy or
  permission that refuses the declare) closes only this channel, never the one the
  worker's deliveries are on. The channel is reopened, and the queues declared again,
  after a reconnect.
* Mandatory publishes: a token routed nowhere (the queue was deleted meanwhile) comes back
  as a basic.return and is not a grant; the queue is declared again next time.

A denied token returns a wait of `window_ms / limit` (at least 1 ms), the mean time
between two tokens at the limit; the worker postpones the task by at least that much
(lifecycle.rate_wait_ms doubles it while denials come in a row). A broker
that cannot be asked (connection down, channel closed, no confirm in time) is a denial
with a short wait, never an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pika
import pika.exceptions

from ... import logs
from .publish import Declared, confirmed_tags
from .rpc import await_reply

if TYPE_CHECKING:
    from .connection import Link

MAX_QUEUE_NAME_BYTES = 255  # AMQP 0-9-1 shortstr
EXPIRES_SLACK_MS = 600_000  # an unused token queue outlives its last token by this
CONFIRM_TIMEOUT_S = 5.0  # no confirm in this time (a blocked connection): denied
UNAVAILABLE_WAIT_MS = 250  # the wait returned when RabbitMQ could not be asked
REOPEN_AFTER_S = 1.0  # after a channel failure, do not try again sooner than this


def token_queue(prefix: str, task: str, limit: int, window_ms: int) -> str:
    """`<prefix>.rate.<task>.<limit>.<window_ms>`; a task name too long for AMQP's
    255-byte queue names is cut and suffixed with a hash of the whole name."""
    head, tail = f"{prefix}.rate.", f".{limit}.{window_ms}"
    name = f"{head}{task}{tail}"
    if len(name.encode()) <= MAX_QUEUE_NAME_BYTES:
        return name
    digest = hashlib.sha256(task.encode()).hexdigest()[:16]
    room = MAX_QUEUE_NAME_BYTES - len(f"{head}~{digest}{tail}".encode())
    short = task.encode()[: max(0, room)].decode("utf-8", "ignore")
    return f"{head}{short}~{digest}{tail}"


def token_queue_args(limit: int, window_ms: int) -> dict:
    window_ms = max(1, window_ms)
    return {
        "x-queue-type": "classic",
        "x-max-length": max(1, limit),
        "x-overflow": "reject-publish",
        "x-message-ttl": window_ms,
        "x-expires": window_ms + EXPIRES_SLACK_MS,
    }


def denied_wait_ms(limit: int, window_ms: int) -> int:
    """How long a task that got no token waits: the mean gap between tokens at the limit."""
    return max(1, round(window_ms / max(1, limit)))


class Denied(Exception):
    """RabbitMQ nacked the token: the queue is full."""


class Unavailable(Exception):
    """The token channel is not usable right now."""


class RateTokens:
    """Takes tokens for one worker, on its own channel of the worker's connection.

    `link` is the worker's connection.Link; only its `conn` (the current
    AsyncioConnection, replaced on every reconnect), `connected` and `loop` are used."""

    def __init__(self, link: Link, prefix: str) -> None:
        self.link, self.prefix = link, prefix
        self.channel: Any = None
        self._conn: Any = None  # the connection `channel` belongs to
        self._declared = Declared()
        self._lock = asyncio.Lock()  # one opener / declarer at a time
        self._confirms: dict[int, asyncio.Future] = {}
        self._returned: set[str] = set()
        self._rpcs: set[asyncio.Future] = set()
        self._next_tag = 1
        self._retry_at = 0.0
        self._opening: Any = None  # a channel being opened

    async def acquire(self, task: str, limit: int, window_ms: int) -> tuple[int, int]:
        """(1, 0) with a token; (0, wait_ms) without one. Never raises for broker trouble."""
        name = token_queue(self.prefix, task, limit, window_ms)
        try:
            channel = await self._ready(name, token_queue_args(limit, window_ms))
            await asyncio.wait_for(self._publish(channel, name), CONFIRM_TIMEOUT_S)
        except Denied:
            return 0, denied_wait_ms(limit, window_ms)
        except (Unavailable, TimeoutError, ConnectionError, pika.exceptions.AMQPError) as exc:
            error = str(exc) or type(exc).__name__
            logs.log("rate token unavailable", logging.DEBUG, task=task, error=error)
            return 0, UNAVAILABLE_WAIT_MS
        return 1, 0

    # -- the channel -----------------------------------------------------------------------
    async def _ready(self, name: str, arguments: dict) -> Any:
        """The open token channel, with `name` declared on it (when due)."""
        channel = self.channel
        if self._usable(channel) and not self._declared.due(name):
            return channel  # the common case: no lock, no round trip
        async with self._lock:
            if not self._usable(self.channel):
                await self._open()
            channel = self.channel
            if self._declared.due(name):
                await self._rpc(
                    lambda done: channel.queue_declare(
                        name, durable=True, arguments=arguments, callback=done
                    )
                )
                self._declared.mark(name)
            return channel

    def _usable(self, channel: Any) -> bool:
        return (
            channel is not None
            and channel.is_open
            and self._conn is self.link.conn
            and self.link.connected
        )

    async def _open(self) -> None:
        """A new channel in confirm mode on the worker's current connection."""
        if not self.link.connected:
            raise Unavailable("RabbitMQ connection is down (reconnecting)")
        if time.monotonic() < self._retry_at:
            raise Unavailable("the rate-limit channel failed a moment ago")
        conn = self.link.conn
        old, self.channel = self.channel, None
        self._fail_all(Unavailable("the rate-limit channel was replaced"))
        if old is not None and old.is_open:
            with contextlib.suppress(Exception):
                old.close()
        self._declared.forget()
        self._returned, self._next_tag = set(), 1

        def start(done) -> None:
            self._opening = conn.channel(on_open_callback=done)
            self._opening.add_on_close_callback(self._on_close)

        self._conn = conn
        try:
            channel = await self._rpc(start)
            channel.add_on_return_callback(self._on_return)
            on_confirm = functools.partial(self._on_confirm, channel)
            await self._rpc(lambda done: channel.confirm_delivery(on_confirm, callback=done))
        except BaseException:
            if self._opening is not None and self._opening.is_open:
                with contextlib.suppress(Exception):
                    self._opening.close()
            raise
        finally:
            opening, self._opening = self._opening, None
        self.channel = opening

    def _on_close(self, channel: Any, reason: Any) -> None:
        if channel is not self.channel and channel is not self._opening:
            return  # a channel already replaced: its waiters were failed then
        self.channel = None
        if isinstance(reason, pika.exceptions.ChannelClosedByBroker):
            # Refused by the broker (a policy or permission that forbids the declare,
            # say): try again a moment later, not on every task.
            self._retry_at = time.monotonic() + REOPEN_AFTER_S
            logs.warn("rate-limit channel closed by RabbitMQ", reason=str(reason))
        self._fail_all(Unavailable(f"rate-limit channel closed: {reason}"))

    def _fail_all(self, exc: Exception) -> None:
        for fut in [*self._confirms.values(), *self._rpcs]:
            if not fut.done():
                fut.set_exception(exc)
        self._confirms.clear()
        self._rpcs.clear()

    async def _rpc(self, start: Callable[[Callable[[Any], None]], Any]) -> Any:
        """A pika call's reply; a closed channel or connection fails it with Unavailable."""
        return await await_reply(self.link.loop, start, self._rpcs, CONFIRM_TIMEOUT_S, Unavailable)

    # -- tokens ------------------------------------------------------------------------------
    def _publish(self, channel: Any, name: str) -> asyncio.Future:
        """Publish one token; the future resolves on RabbitMQ's ack and fails with Denied
        on its nack (the queue is full)."""
        tag = self._next_tag
        self._next_tag += 1
        fut = self.link.loop.create_future()
        self._confirms[tag] = fut
        props = pika.BasicProperties(delivery_mode=1, message_id=str(tag))
        try:
            channel.basic_publish("", name, b"", props, mandatory=True)
        except Exception as exc:
            self._confirms.pop(tag, None)
            raise Unavailable(f"publishing a token failed: {exc!r}") from None
        return fut

    def _on_return(self, channel: Any, _method: Any, props: Any, _body: bytes) -> None:
        # basic.return comes before the same publish's confirm on a channel.
        if channel is not self.channel:
            return
        self._returned.add(props.message_id or "")
        self._declared.forget()  # the queue is gone: declare it again next time

    def _on_confirm(self, channel: Any, frame: Any) -> None:
        if channel is not self.channel:
            return  # a replaced channel's late confirm: its waiters were failed then
        tags, nack = confirmed_tags(frame.method, self._confirms)
        for tag in tags:
            fut = self._confirms.pop(tag, None)
            returned = str(tag) in self._returned
            self._returned.discard(str(tag))
            if fut is None or fut.done():
                continue
            if nack:
                fut.set_exception(Denied())
            elif returned:
                fut.set_exception(Unavailable("no token queue (the token was returned)"))
            else:
                fut.set_result(None)
