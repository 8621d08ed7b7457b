"""Sharded queues on the operator's side: which shards the workers drain, and when a
shrunk queue's old shards may be let go. Pure functions.

`status.shards` ({queue: count}, only counts above 1) remembers how many shards the
workers drain. Growing a queue takes effect at once. Shrinking it (spec 4 -> 2) leaves
tasks in the shards above the new count, so the workers keep draining them
(EBBTIDE_DRAIN_SHARDS) and the operator keeps reading them, until the statistics show
them empty; then the count comes down to the highest shard still holding work, and at
last to the spec's, which rolls the workers once more.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ebbtide.shards import MAX_SHARDS, ShardedStats, pending

from ebbtide_operator.spec import TaskQueueSpec


def drained(status: Mapping[str, Any] | None, spec: TaskQueueSpec) -> dict[str, int]:
    """How many shards of each spec queue the workers drain now: the spec's count, or
    more while a shrink is being drained (`status.shards`; a bad entry is ignored)."""
    remembered = (status or {}).get("shards")
    remembered = remembered if isinstance(remembered, Mapping) else {}
    out: dict[str, int] = {}
    for q in spec.queues:
        count = remembered.get(q.name)
        ok = isinstance(count, int) and not isinstance(count, bool) and count <= MAX_SHARDS
        out[q.name] = max(q.shards, count if ok else 1)
    return out


def drain_extra(spec: TaskQueueSpec, counts: Mapping[str, int]) -> dict[str, int]:
    """The queues drained beyond their spec count (what EBBTIDE_DRAIN_SHARDS says)."""
    return {q.name: counts[q.name] for q in spec.queues if counts.get(q.name, 1) > q.shards}


def next_drained(
    spec: TaskQueueSpec, counts: Mapping[str, int], stats: ShardedStats | None
) -> dict[str, int]:
    """The counts after this poll: a queue drained beyond its spec count comes down to
    one above its highest shard that still holds tasks (ready, delayed or running),
    never below the spec's; unknown statistics (broker unreachable) change nothing."""
    out: dict[str, int] = {}
    for q in spec.queues:
        count = max(q.shards, counts.get(q.name, 1))
        if count > q.shards and stats is not None:
            parts = stats.shards.get(q.name, {})
            busy = [i for i in range(q.shards, count) if i in parts and pending(parts[i]) > 0]
            count = max(busy) + 1 if busy else q.shards
        out[q.name] = count
    return out


def status_field(counts: Mapping[str, int]) -> dict[str, int]:
    """`status.shards`: the counts above 1 (an unsharded TaskQueue's status is unchanged)."""
    return {name: count for name, count in counts.items() if count > 1}
