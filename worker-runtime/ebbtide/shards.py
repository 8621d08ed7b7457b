"""Sharded queues: one logical queue stored as K broker queues. Pure functions, no I/O.

A shard is an ordinary broker queue (Redis keys, a RabbitMQ queue), so sharding works the
same on every broker and sits above the broker layer. Shard 0 is the logical queue's own
name, so an unsharded queue is a 1-shard queue and growing it strands nothing; shard
i > 0 is `<queue>~<i>`. `~` is not allowed in a user's queue name (message.is_queue_name),
so no user queue can collide with a shard. Producers pick a shard by a stable hash of a
key (blake2b: the same in every process, unlike Python's salted `hash`) or round-robin;
workers spread each claim's quota over the shards (selection.plan_claim); statistics are
summed back into the logical queue (`sum_shards`).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace

from .brokers.base import BrokerStats, QueueStats
from .message import check_queue, is_queue_name

SEPARATOR = "~"
MAX_SHARDS = 256
SHARDS_ENV = "EBBTIDE_SHARDS"  # what the operator sets on worker pods: "emails=8,reports=2"
DRAIN_SHARDS_ENV = "EBBTIDE_DRAIN_SHARDS"  # shards still drained after a shrink: "emails=8"

_SUFFIX = re.compile(r"[1-9][0-9]{0,2}")


def check_shards(count: object, where: str = "shards") -> int:
    """A shard count, 1..MAX_SHARDS; a ValueError naming `where` otherwise."""
    if isinstance(count, bool) or not isinstance(count, int):
        raise ValueError(f"{where} must be an integer 1..{MAX_SHARDS}, got {count!r}")
    if not 1 <= count <= MAX_SHARDS:
        raise ValueError(f"{where} must be 1..{MAX_SHARDS}, got {count}")
    return count


def shard_name(queue: str, index: int) -> str:
    """The broker queue of shard `index` of `queue` (shard 0 is `queue` itself)."""
    return queue if index == 0 else f"{queue}{SEPARATOR}{index}"


def shard_names(queue: str, count: int) -> list[str]:
    return [shard_name(queue, i) for i in range(count)]


def split_shard(name: str) -> tuple[str, int] | None:
    """(logical queue, shard index) of a broker queue name, or None for a name that is
    neither a queue name nor the derived form `<queue>~<1..255>`."""
    base, sep, suffix = name.rpartition(SEPARATOR)
    if not sep:
        return (name, 0) if is_queue_name(name) else None
    if not is_queue_name(base) or not _SUFFIX.fullmatch(suffix) or int(suffix) >= MAX_SHARDS:
        return None
    return base, int(suffix)


def is_broker_queue_name(name: object) -> bool:
    """The broker-level name rule: a user queue name, or one of its shards (only the
    derived form: `emails~3`, never `emails~03`, `emails~0` nor `a~b`)."""
    return isinstance(name, str) and split_shard(name) is not None


def logical_queue(name: str) -> str:
    """The logical queue a broker queue belongs to (a foreign name stays as it is)."""
    split = split_shard(name)
    return split[0] if split is not None else name


def shard_of(key: str, count: int) -> int:
    """The shard a key hashes to: stable across processes, hosts and Python versions."""
    if count == 1:
        return 0
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


class RoundRobin:
    """Per-producer round-robin over a queue's shards, from a random start, so many
    producers that each send a few tasks do not all pile onto shard 0."""

    def __init__(self) -> None:
        self._counters: dict[str, Iterator[int]] = {}

    def next(self, queue: str, count: int) -> int:
        counter = self._counters.get(queue)
        if counter is None:
            start = int.from_bytes(os.urandom(2), "big")
            counter = self._counters.setdefault(queue, itertools.count(start))
        return next(counter) % count


def parse_counts(text: str | None, where: str = SHARDS_ENV) -> dict[str, int]:
    """`emails=8,reports=2` -> {"emails": 8, "reports": 2}; a ValueError naming the bad
    item (the env var or flag is `where`)."""
    counts: dict[str, int] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, eq, count = part.partition("=")
        name = name.strip()
        if not eq or not count.strip().isdigit():
            raise ValueError(f"bad {where} item {part!r}: use QUEUE=COUNT, e.g. emails=8")
        try:
            check_queue(name)
        except ValueError as exc:
            raise ValueError(f"{exc}, in {where} {text!r}") from None
        if name in counts:
            raise ValueError(f"{where} {text!r} names queue {name!r} twice")
        counts[name] = check_shards(int(count), f"the shard count of {name!r} in {where}")
    return counts


def format_counts(counts: Mapping[str, int]) -> str:
    """The inverse of parse_counts, in the mapping's order."""
    return ",".join(f"{name}={count}" for name, count in counts.items())


def counts_from_env(
    environ: Mapping[str, str] | None = None,
) -> tuple[dict[str, int], dict[str, int]]:
    """(shard counts, drain counts) from EBBTIDE_SHARDS and EBBTIDE_DRAIN_SHARDS."""
    env = os.environ if environ is None else environ
    return (
        parse_counts(env.get(SHARDS_ENV), SHARDS_ENV),
        parse_counts(env.get(DRAIN_SHARDS_ENV), DRAIN_SHARDS_ENV),
    )


# -- statistics ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardedStats:
    """A snapshot with each logical queue's shards summed (`stats`) and, for the
    queues that have more than one shard, the per-shard figures (`shards`)."""

    stats: BrokerStats
    shards: dict[str, dict[int, QueueStats]] = field(default_factory=dict)


def sum_queue(name: str, parts: Iterable[QueueStats]) -> QueueStats:
    """One logical queue's figures from its shards' figures: counters add up, the
    oldest ready task and the next due one are the earliest of any shard."""
    parts = list(parts)
    by_priority: dict[int, int] = {}
    for q in parts:
        for prio, n in q.ready_by_priority.items():
            by_priority[prio] = by_priority.get(prio, 0) + n
    oldest = [q.oldest_ready_at for q in parts if q.oldest_ready_at is not None]
    due_at = [q.next_due_at for q in parts if q.next_due_at is not None]
    return QueueStats(
        queue=name,
        ready=sum(q.ready for q in parts),
        ready_by_priority=by_priority,
        in_flight=sum(q.in_flight for q in parts),
        delayed=sum(q.delayed for q in parts),
        due=sum(q.due for q in parts),
        next_due_at=min(due_at) if due_at else None,
        dead=sum(q.dead for q in parts),
        oldest_ready_at=min(oldest) if oldest else None,
        enqueued_total=sum(q.enqueued_total for q in parts),
        completed_total=sum(q.completed_total for q in parts),
        busy_seconds_total=sum(q.busy_seconds_total for q in parts),
    )


def sum_shards(stats: BrokerStats) -> ShardedStats:
    """The one place shards are summed (the operator, `ebbtide stats`): every broker
    queue `q~i` is folded into `q`, in the order the logical queues first appear. A
    worker's queue list is folded the same way."""
    groups: dict[str, dict[int, QueueStats]] = {}
    for name, q in stats.queues.items():
        split = split_shard(name)
        logical, index = split if split is not None else (name, 0)
        groups.setdefault(logical, {})[index] = q
    queues = {
        name: parts[0] if list(parts) == [0] else sum_queue(name, parts.values())
        for name, parts in groups.items()
    }
    workers = tuple(
        replace(w, queues=tuple(dict.fromkeys(logical_queue(q) for q in w.queues)))
        for w in stats.workers
    )
    shards = {
        name: dict(sorted(parts.items())) for name, parts in groups.items() if list(parts) != [0]
    }
    return ShardedStats(replace(stats, queues=queues, workers=workers), shards)


def pending(q: QueueStats) -> int:
    """Tasks a shard still holds that a worker must run (dead ones are the DLQ's)."""
    return q.ready + q.delayed + q.in_flight
