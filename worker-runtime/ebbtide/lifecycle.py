"""The message state machine's decisions, as pure functions (Asynq-style).

    ready --claim--> in_flight --ack-------> done
                        |      --retry-----> delayed --due--> ready
                        |      --dead------> dead  --replay--> ready
                        |      --requeue---> ready (handed back, not an attempt)
                        '--lease expires--> ready (reclaimed by any worker)

The Lua scripts apply the transitions atomically; this module decides which one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    ACK = "ack"
    RETRY = "retry"
    DEAD = "dead"
    REQUEUE = "requeue"
    POSTPONE = "postpone"


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


@dataclass(frozen=True)
class QueueSelection:
    """Which queues a worker consumes and how: strict order or weighted (Asynq)."""

    queues: tuple[tuple[str, int], ...]  # (name, weight)
    strict: bool

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.queues)


def parse_queues(spec: str | None, strict: bool = False) -> QueueSelection:
    """`q1,q2` (strict if --strict, else equal weights) or `q1:3,q2:1` (weighted)."""
    items: list[tuple[str, int]] = []
    for part in (spec or "default").split(","):
        part = part.strip()
        if not part:
            continue
        name, _, weight = part.partition(":")
        name = name.strip()
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
            raise ValueError(f"bad queue name {name!r} in --queues {spec!r}")
        if weight:
            if not weight.strip().isdigit() or int(weight) < 1:
                raise ValueError(f"bad weight {weight!r} for queue {name!r}: a positive integer")
            items.append((name, int(weight)))
        else:
            items.append((name, 1))
    if not items:
        raise ValueError(f"--queues {spec!r} names no queue")
    if len({n for n, _ in items}) != len(items):
        raise ValueError(f"--queues {spec!r} names a queue twice")
    return QueueSelection(tuple(items), strict)


def plan_claim(
    selection: QueueSelection, n: int, rand: Callable[[], float] = random.random
) -> list[tuple[str, int]]:
    """Order and per-queue quotas for one batched claim of `n` tasks.

    Strict: queues in the given order, the first may take everything; the claim script
    fills the rest in order. Weighted: each of the `n` slots is drawn by weight, and the
    order is a weighted random permutation, so over many claims each queue gets its share
    while an empty queue's share falls through to the others.
    """
    if selection.strict or len(selection.queues) == 1:
        names = selection.names
        return [(names[0], n)] + [(name, 0) for name in names[1:]]
    quotas = {name: 0 for name in selection.names}
    total = sum(w for _, w in selection.queues)
    for _ in range(n):
        quotas[_pick(selection.queues, total, rand)] += 1
    order: list[str] = []
    remaining = list(selection.queues)
    while remaining:
        name = _pick(remaining, sum(w for _, w in remaining), rand)
        order.append(name)
        remaining = [(q, w) for q, w in remaining if q != name]
    return [(name, quotas[name]) for name in order]


def _pick(weighted: Sequence[tuple[str, int]], total: int, rand: Callable[[], float]) -> str:
    x = rand() * total
    for name, weight in weighted:
        x -= weight
        if x < 0:
            return name
    return weighted[-1][0]


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
