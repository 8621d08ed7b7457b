"""An exception's causes, through the nesting pika wraps its socket errors in.

Shared by the CLI's one-line failures (`cli_errors`) and the RabbitMQ worker's "cannot
reach" log (`brokers/rabbitmq/connection.py`). It imports neither redis-py nor pika up
front: the worker's start-up path uses it, and redis-py alone costs ~0.17 s to import.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

DEPTH = 8  # how far down __cause__/__context__/args/pika's wrappers a reason is looked for


@dataclass(frozen=True)
class PikaKinds:
    """pika's exception classes, or none without the `rabbitmq` extra."""

    connection: tuple[type[BaseException], ...] = ()
    login: tuple[type[BaseException], ...] = ()
    phase: tuple[type[BaseException], ...] = ()  # wraps the socket error as `.exception`
    workflow: tuple[type[BaseException], ...] = ()  # every attempt's error in `.exceptions`


@functools.cache
def pika_kinds() -> PikaKinds:
    try:
        import pika.exceptions as pe
        from pika.adapters.utils import connection_workflow as cw
    except ImportError:
        return PikaKinds()
    return PikaKinds(
        (pe.AMQPConnectionError,),
        (pe.ProbableAuthenticationError, pe.ProbableAccessDeniedError),
        (cw.AMQPConnectorPhaseErrorBase,),
        (cw.AMQPConnectionWorkflowFailed,),
    )


def causes(exc: BaseException) -> Iterator[BaseException]:
    """exc, its causes and contexts, and the exceptions nested in its args and in pika's
    wrappers (the last connection attempt first), breadth first and bounded."""
    pika = pika_kinds()
    seen: set[int] = set()
    todo = [(exc, 0)]
    while todo:
        e, depth = todo.pop(0)
        if id(e) in seen or depth > DEPTH:
            continue
        seen.add(id(e))
        yield e
        nested = [e.__cause__, e.__context__, *e.args]
        if pika.phase and isinstance(e, pika.phase):
            nested.append(e.exception)  # type: ignore[attr-defined]
        if pika.workflow and isinstance(e, pika.workflow):
            nested += reversed(e.exceptions)  # type: ignore[attr-defined]
        todo += [(n, depth + 1) for n in nested if isinstance(n, BaseException)]


def first(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    return next((e for e in causes(exc) if isinstance(e, kinds)), None)


def socket_error(exc: BaseException) -> OSError | None:
    """The socket's own error ("Connection refused", "Name or service not known") among
    exc's causes, if there is one."""
    return next((e for e in causes(exc) if isinstance(e, OSError) and e.strerror), None)


def one_line(text: object) -> str:
    return " ".join(str(text).split())
