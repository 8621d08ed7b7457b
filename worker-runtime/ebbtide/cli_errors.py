"""What the CLI prints when a command fails: one line and an exit code, never a traceback.

`describe` is pure (an exception and the broker URL in, a `Failure` out), so every case
is a unit test away; `cli.main` wraps command dispatch in it, so every command (worker,
stats, dlq ...) fails the same way. An exception it does not know is a bug and keeps its
traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis.exceptions

from .brokers.base import redact
from .errors import EbbtideError

EXIT_FAILED = 1  # the command could not do its job (broker away, refused, ...)
EXIT_USAGE = 2  # bad arguments, app path or URL
_DEPTH = 8  # how far down __cause__/__context__/args a reason is looked for


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


@dataclass(frozen=True)
class _Pika:
    """pika's exception classes, or none without the `rabbitmq` extra."""

    connection: tuple[type[BaseException], ...] = ()
    login: tuple[type[BaseException], ...] = ()
    phase: tuple[type[BaseException], ...] = ()  # wraps the socket error as `.exception`


def _pika() -> _Pika:
    try:
        import pika.exceptions as pe
        from pika.adapters.utils.connection_workflow import AMQPConnectorPhaseErrorBase
    except ImportError:
        return _Pika()
    return _Pika(
        (pe.AMQPConnectionError,),
        (pe.ProbableAuthenticationError, pe.ProbableAccessDeniedError),
        (AMQPConnectorPhaseErrorBase,),
    )


def _chain(exc: BaseException, pika: _Pika) -> Iterator[BaseException]:
    """exc, its causes and contexts, and the exceptions nested in its args (pika nests
    the socket error there), breadth first and bounded."""
    seen: set[int] = set()
    todo = [(exc, 0)]
    while todo:
        e, depth = todo.pop(0)
        if id(e) in seen or depth > _DEPTH:
            continue
        seen.add(id(e))
        yield e
        nested = [e.__cause__, e.__context__, *e.args]
        if pika.phase and isinstance(e, pika.phase):
            nested.append(e.exception)  # type: ignore[attr-defined]
        todo += [(n, depth + 1) for n in nested if isinstance(n, BaseException)]


def _os_reason(exc: BaseException, pika: _Pika) -> str | None:
    """'Connection refused', 'Name or service not known', ...: the socket's own words."""
    for e in _chain(exc, pika):
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
    return None


def _first(
    exc: BaseException, kinds: tuple[type[BaseException], ...], pika: _Pika
) -> BaseException | None:
    return next((e for e in _chain(exc, pika) if isinstance(e, kinds)), None)


def _line(text: str) -> str:
    return " ".join(str(text).split())


def describe(exc: BaseException, url: str | None) -> Failure | None:
    """The one line to print for `exc`, raised by a command run against `url`; None for
    an exception that is not a foreseen failure (a bug: let it show its traceback)."""
    if isinstance(exc, ValueError | TypeError | ImportError | AttributeError):
        return Failure(f"ebbtide: error: {_line(str(exc))}", EXIT_USAGE)
    kind, where = broker_kind(url), redact(url) if url else "the configured URL"
    pika = _pika()
    login = _first(exc, (redis.exceptions.AuthenticationError, *pika.login), pika)
    if login is not None:
        detail = _line(str(login)) or type(login).__name__
        return Failure(f"ebbtide: {kind} at {where} refused the login: {detail}", EXIT_FAILED)
    conn_kinds = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, *pika.connection)
    conn = _first(exc, conn_kinds, pika)
    if conn is not None:
        reason = _os_reason(exc, pika)
        if reason is None:
            timed_out = isinstance(conn, redis.exceptions.TimeoutError)
            reason = "timed out" if timed_out else _line(str(conn)) or type(conn).__name__
        return Failure(f"ebbtide: cannot reach {kind} at {where}: {reason}", EXIT_FAILED)
    if isinstance(exc, redis.exceptions.RedisError):
        return Failure(f"ebbtide: Redis at {where} answered: {_line(str(exc))}", EXIT_FAILED)
    if isinstance(exc, EbbtideError | OSError):  # ours, or a socket/file the command needs
        return Failure(f"ebbtide: {_line(str(exc))}", EXIT_FAILED)
    return None
