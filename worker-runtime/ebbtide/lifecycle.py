"""The message state machine: its states, its transitions, and the decisions between
them, as pure functions (Asynq-style: a TaskState enum, one script per transition).

    ready --claim--> in_flight --ack-------> done
                        |      --retry-----> delayed --due--> ready
                        |      --postpone--> delayed (rate-limited, not an attempt)
                        |      --dead------> dead  --replay--> ready
                        |      --requeue---> ready (handed back, not an attempt)
                        '--lost---------> ready (lease expired or worker dead; a started
                                                 task counts a recovery) or dead
                                                 (lost more than max_recoveries times)

The brokers apply the transitions atomically (Lua scripts on Redis, confirmed publishes
on RabbitMQ); this module names them and decides which one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from enum import StrEnum


class TaskState(StrEnum):
    """Where a task is. `done` is not a state: a finished task is gone from the broker."""

    READY = "ready"
    DELAYED = "delayed"
    IN_FLIGHT = "in_flight"
    DEAD = "dead"


class Outcome(StrEnum):
    """How a claimed (in-flight) task is settled; the values are the wire names the Lua
    scripts read, so they never change."""

    ACK = "ack"
    RETRY = "retry"
    DEAD = "dead"
    REQUEUE = "requeue"
    POSTPONE = "postpone"


def next_state(outcome: Outcome) -> TaskState | None:
    """The state an in-flight task moves to when settled so; None = done (removed).
    (Compared by value, so a plain "ack" works too: Enum members hash by name.)"""
    if outcome == Outcome.ACK:
        return None
    if outcome == Outcome.DEAD:
        return TaskState.DEAD
    if outcome == Outcome.REQUEUE:
        return TaskState.READY
    if outcome in (Outcome.RETRY, Outcome.POSTPONE):
        return TaskState.DELAYED
    raise ValueError(f"not an outcome: {outcome!r}")


def is_final(outcome: Outcome) -> bool:
    """Whether the task's life ends here (success or the DLQ): what `completed` counts."""
    return outcome in (Outcome.ACK, Outcome.DEAD)


def backoff_seconds(
    attempt: int, base: float = 1.0, cap: float = 600.0, rand: Callable[[], float] = random.random
) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, so retries of
    many tasks that failed together spread out instead of stampeding."""
    ceiling = min(cap, base * (2 ** max(0, attempt)))
    return ceiling / 2 + rand() * ceiling / 2


def after_failure(attempt: int, max_retries: int) -> Outcome:
    """`attempt` counts earlier tries (0 on the first run)."""
    return Outcome.RETRY if attempt < max_retries else Outcome.DEAD


DEFAULT_MAX_RECOVERIES = 3  # @app.task(max_recoveries=...), also for unknown task names


def lost_too_often(recoveries: int, max_recoveries: int) -> bool:
    """The poison limit: a task whose worker was lost more than `max_recoveries` times
    (it crashed its process, or never let its lease be renewed) is not run again."""
    return recoveries >= max_recoveries + 1


def lost_reason(recoveries: int) -> str:
    """The DLQ reason of a task past its poison limit."""
    return f"worker lost {recoveries} times"


UNKNOWN_RETRY_CAP_S = 60.0  # an unknown task name is looked at again at least this often


def unknown_task_wait(
    first_seen: float, now: float, tries: int, grace_s: float, rand: Callable[[], float]
) -> float | None:
    """How long to put back a task whose name this worker does not register (a rolling
    deploy: producers ahead of workers), with backoff; None once `grace_s` has passed
    since a worker first saw it: then it dies."""
    if now - first_seen >= grace_s:
        return None
    return backoff_seconds(tries, base=1.0, cap=UNKNOWN_RETRY_CAP_S, rand=rand)


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(ms|s|m|h)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


def parse_rate(rate: str) -> tuple[int, int]:
    """`"100/s"`, `"10/m"`, `"5/10s"` -> (limit, window_ms)."""
    match = _RATE.match(rate)
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"bad rate {rate!r}: use e.g. '100/s', '10/m', '5/10s'")
    count = int(match.group(2) or 1)
    return int(match.group(1)), count * _UNIT_MS[match.group(3)]


def rate_wait_ms(broker_wait_ms: int, window_ms: int, denials: int) -> int:
    """How long to postpone a task that got no rate token: at least what the broker asked,
    doubled for each denial in a row since this worker last got a token, up to a window.

    A backlog of waiting tasks would otherwise all come back each time a token frees, and
    every return is a postponement round trip for one token; with the doubling each
    waiting task comes back about once a window, while a lone task after a short burst
    still waits little."""
    wait = max(1, broker_wait_ms)
    return max(wait, min(window_ms, wait * 2 ** min(denials, 32)))
