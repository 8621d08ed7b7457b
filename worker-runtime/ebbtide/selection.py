"""Which queues a worker consumes, and the per-claim plan over them (Asynq's strict or
weighted priorities, then each queue's quota spread over its shards): pure functions, no
I/O."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .message import check_queue, is_queue_name
from .shards import shard_name


@dataclass(frozen=True)
class QueueSelection:
    """Which queues a worker consumes and how: strict order or weighted (Asynq)."""

    queues: tuple[tuple[str, int], ...]  # (name, weight)
    strict: bool
    # Shards drained per logical queue (absent = 1): shards.py, "Sharded queues" in
    # docs/runtime.md. Weights and strict order stay between logical queues.
    shards: Mapping[str, int] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.queues)

    def with_shards(self, shards: Mapping[str, int]) -> QueueSelection:
        """This selection draining `shards[q]` shards of each queue q it names."""
        counts = {q: shards[q] for q in self.names if shards.get(q, 1) > 1}
        return QueueSelection(self.queues, self.strict, counts)

    def broker_queues(self) -> tuple[str, ...]:
        """Every broker queue a claim plan names (each shard of each queue)."""
        return tuple(shard_name(q, i) for q in self.names for i in range(self.shards.get(q, 1)))


def parse_queues(spec: str | None, strict: bool = False) -> QueueSelection:
    """`q1,q2` (strict if --strict, else equal weights) or `q1:3,q2:1` (weighted)."""
    items: list[tuple[str, int]] = []
    for part in (spec or "default").split(","):
        part = part.strip()
        if not part:
            continue
        name, _, weight = part.partition(":")
        name = name.strip()
        if not is_queue_name(name):
            try:
                check_queue(name)  # says why: a reserved name, or a bad character
            except ValueError as exc:
                raise ValueError(f"{exc}, in --queues {spec!r}") from None
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
    selection: QueueSelection,
    n: int,
    rand: Callable[[], float] = random.random,
    turn: int = 0,
) -> list[tuple[str, int]]:
    """Order and per-queue quotas for one batched claim of `n` tasks, over broker queues.

    Strict: queues in the given order, the first may take everything; the claim script
    fills the rest in order. Weighted: each of the `n` slots is drawn by weight, and the
    order is a weighted random permutation, so over many claims each queue gets its share
    while an empty queue's share falls through to the others. A sharded queue's quota is
    then spread over its shards (`spread`), starting at shard `turn` mod K: the caller
    counts its claims, so the start rotates and no shard starves.
    """
    return [
        item
        for name, quota in _logical_plan(selection, n, rand)
        for item in spread(name, quota, selection.shards.get(name, 1), turn)
    ]


SPREAD_CHUNK = 8  # the least quota a claim gives one shard (see spread)


def spread(
    queue: str, quota: int, shards: int, turn: int, chunk: int = SPREAD_CHUNK
) -> list[tuple[str, int]]:
    """`quota` over the `shards` shards of `queue`, in the order shard `turn` mod K, then
    the next ones, wrapping. Each shard in that order gets an even share, but at least
    `chunk`, until the quota is used up: a Redis claim pays a few calls per shard it
    takes from whatever it finds there, so a small claim over many shards goes to a few
    of them, and the rotating start (the caller counts its claims) serves each in turn.
    Every shard is named (quota 0 still lets the claim script fill left-over slots from
    it, and a push broker subscribe to it)."""
    if shards <= 1:
        return [(queue, quota)]
    share = max(chunk, -(-quota // shards))
    start = turn % shards
    plan, left = [], quota
    for k in range(shards):
        take = min(share, left)
        plan.append((shard_name(queue, (start + k) % shards), take))
        left -= take
    return plan


def _logical_plan(
    selection: QueueSelection, n: int, rand: Callable[[], float]
) -> list[tuple[str, int]]:
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
