"""What the CLI prints when a command fails: one line and an exit code, never a traceback.

`describe` is pure (an exception and the broker URL in, a `Failure` out), so every case
is a unit test away; `cli.main` wraps command dispatch in it, so every command (worker,
stats, dlq ...) fails the same way. An exception it does not know is a bug and keeps its
traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import redis.exceptions

from . import causes
from .brokers.base import redact
from .causes import one_line
from .errors import EbbtideError

EXIT_FAILED = 1  # the command could not do its job (broker away, refused, ...)
EXIT_USAGE = 2  # bad arguments, app path or URL


@dataclass(frozen=True)
class Failure:
    message: str  # one line, starting "ebbtide: "
    code: int


def broker_kind(url: str | None) -> str:
    scheme = urlsplit(url or "").scheme.lower()
    if scheme in ("redis", "rediss", "unix"):
        return "Redis"
    if scheme in ("amqp", "amqps"):
        return "RabbitMQ"
    return "the broker"


def describe(exc: BaseException, url: str | None) -> Failure | None:
    """The one line to print for `exc`, raised by a command run against `url`; None for
    an exception that is not a foreseen failure (a bug: let it show its traceback)."""
    if isinstance(exc, ValueError | TypeError | ImportError | AttributeError):
        return Failure(f"ebbtide: error: {one_line(exc)}", EXIT_USAGE)
    kind, where = broker_kind(url), redact(url) if url else "the configured URL"
    pika = causes.pika_kinds()
    login = causes.first(exc, (redis.exceptions.AuthenticationError, *pika.login))
    if login is not None:
        detail = one_line(login) or type(login).__name__
        return Failure(f"ebbtide: {kind} at {where} refused the login: {detail}", EXIT_FAILED)
    conn_kinds = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, *pika.connection)
    conn = causes.first(exc, conn_kinds)
    if conn is not None:
        socket = causes.socket_error(exc)
        reason = socket.strerror if socket is not None else None
        if reason is None:
            timed_out = isinstance(conn, redis.exceptions.TimeoutError)
            reason = "timed out" if timed_out else one_line(conn) or type(conn).__name__
        return Failure(f"ebbtide: cannot reach {kind} at {where}: {reason}", EXIT_FAILED)
    if isinstance(exc, redis.exceptions.RedisError):
        return Failure(f"ebbtide: Redis at {where} answered: {one_line(exc)}", EXIT_FAILED)
    if isinstance(exc, EbbtideError | OSError):  # ours, or a socket/file the command needs
        return Failure(f"ebbtide: {one_line(exc)}", EXIT_FAILED)
    return None
