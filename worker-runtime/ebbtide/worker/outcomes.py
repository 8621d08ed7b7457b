"""How a claimed task is settled: each outcome as a pure function from what happened to
the Settlement the broker applies (lifecycle.Outcome names the transition).

No clock, no randomness, no logging here: the caller passes `now` and `rand`, and logs
what came out, so every decision is a unit test away.
"""

from __future__ import annotations

import random
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..brokers.base import Delivery, Settlement
from ..lifecycle import (
    Outcome,
    after_failure,
    backoff_seconds,
    lost_reason,
    unknown_task_wait,
)
from ..message import reencode


def unique_key(body: dict[str, Any]) -> str:
    """The task's `key=` (released when it completes or dies), '' when none."""
    key = body.get("key")
    return key if isinstance(key, str) else ""


def success(d: Delivery, body: dict[str, Any], seconds: float) -> Settlement:
    """The task returned: ack it (and release its unique key)."""
    return Settlement(Outcome.ACK, d, busy_us=int(seconds * 1e6), unique_key=unique_key(body))


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed run: what to write, and what to log about it."""

    settlement: Settlement
    attempts: int  # tries so far, this one included
    error: str
    retry_in: float | None  # seconds; None = dead

    @property
    def outcome(self) -> Outcome:
        return self.settlement.op


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def failure(
    d: Delivery,
    body: dict[str, Any],
    max_retries: int,
    exc: BaseException,
    seconds: float,
    *,
    backoff_base: float,
    now: float,
    rand: Callable[[], float] = random.random,
) -> Failure:
    """The task raised (or timed out): retry it after a backoff while it has retries
    left, else bury it in the DLQ with its traceback and time of death."""
    attempt = int(body.get("attempt", 0))
    outcome = after_failure(attempt, max_retries)
    body = {**body, "attempt": attempt + 1, "error": error_text(exc)}
    busy = int(seconds * 1e6)
    if outcome is Outcome.RETRY:
        delay = backoff_seconds(attempt, base=backoff_base, rand=rand)
        settlement = Settlement(Outcome.RETRY, d, reencode(body), int(delay * 1000), busy)
        return Failure(settlement, attempt + 1, body["error"], delay)
    body["traceback"] = "".join(traceback.format_exception(exc))
    body["died_at"] = now
    settlement = Settlement(Outcome.DEAD, d, reencode(body), 0, busy, unique_key(body))
    return Failure(settlement, attempt + 1, body["error"], None)


def undecodable(d: Delivery, reason: str, now: float) -> Settlement:
    """A payload that is not a task: to the DLQ, kept raw, with the reason."""
    raw = d.payload
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    return Settlement(Outcome.DEAD, d, reencode({"error": reason, "raw": raw, "died_at": now}))


def unreadable(d: Delivery, envelope: dict[str, Any], reason: str, now: float) -> Settlement:
    """A task whose body this worker cannot open (an unknown format or key, a missing
    extra, a failed tag): to the DLQ as it came, with the reason, so a replay once a
    worker can read it runs it. Its arguments were never decoded, so none are written."""
    if not envelope:
        return undecodable(d, reason, now)
    body = {**envelope, "error": reason, "died_at": now}
    return Settlement(Outcome.DEAD, d, reencode(body), unique_key=unique_key(body))


def unknown_task(
    d: Delivery,
    body: dict[str, Any],
    now: float,
    grace_s: float,
    rand: Callable[[], float] = random.random,
) -> Settlement:
    """A task this worker's app does not register: retried with backoff (not an
    attempt) for `grace_s` since a worker first saw it, as a newer worker may know it;
    then to the DLQ, saying so. The first sighting and the tries travel in the payload."""
    name = body["task"]
    first = body.get("unknown_since")
    if not isinstance(first, int | float) or isinstance(first, bool) or not first <= now:
        first = now
    tries = body.get("unknown_tries")
    tries = tries if isinstance(tries, int) and not isinstance(tries, bool) else 0
    wait = unknown_task_wait(first, now, max(0, tries), grace_s, rand)
    error = f"unknown task name {name!r}: not registered in this worker's app"
    if wait is not None:
        body = {**body, "unknown_since": first, "unknown_tries": max(0, tries) + 1, "error": error}
        return Settlement(Outcome.RETRY, d, reencode(body), int(wait * 1000))
    body = {**body, "error": f"{error} (for {grace_s:g}s)", "died_at": now}
    return Settlement(Outcome.DEAD, d, reencode(body), unique_key=unique_key(body))


def rejected(d: Delivery, body: dict[str, Any], reason: str, now: float) -> Settlement:
    """A task that must not run as it is (arguments that fail its check, a payload over
    the size limit): to the DLQ unrun, with the reason; retrying cannot fix it."""
    body = {**body, "error": reason, "died_at": now}
    return Settlement(Outcome.DEAD, d, reencode(body), unique_key=unique_key(body))


def lost(d: Delivery, body: dict[str, Any], now: float) -> Settlement:
    """Past the poison limit (its worker was lost too often): to the DLQ unrun."""
    body = {**body, "error": lost_reason(d.recoveries), "died_at": now}
    return Settlement(Outcome.DEAD, d, reencode(body), unique_key=unique_key(body))


def postpone(d: Delivery, delay_ms: int) -> Settlement:
    """No rate token: back to delayed for `delay_ms`, not an attempt."""
    return Settlement(Outcome.POSTPONE, d, delay_ms=delay_ms)


def hand_back(deliveries: Sequence[Delivery]) -> list[Settlement]:
    """Requeue deliveries that never ran (or were cut off). Each requeue is an LPUSH
    to the head of its list, so they are written newest first: the batch lands in its
    original order."""
    return [Settlement(Outcome.REQUEUE, d) for d in reversed(deliveries)]
