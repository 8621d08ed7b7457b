"""Script calls as (KEYS, ARGV), one per slot group (pure: unit-tested directly).

Every key a script touches is declared in KEYS, and one call touches one group: on a
Redis Cluster one slot, on a single Redis everything (group 0), so there the common
calls stay one round trip each. The argument layouts are the scripts' (lua/common.lua's
`work`, and the headers of enqueue.lua, heartbeat.lua, stats.lua, dlq.lua).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...lifecycle import Outcome
from ..base import Delivery, Outgoing, Plan, Settlement
from .keys import Layout


@dataclass
class Call:
    keys: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)


@dataclass
class WorkGroup:
    """What one work call (claim, settle or exchange) does in one slot group."""

    plan: list[tuple[str, int]] = field(default_factory=list)
    settlements: list[Settlement] = field(default_factory=list)


def split_work(layout: Layout, plan: Plan, settlements: Sequence[Settlement]) -> list[WorkGroup]:
    """The plan's and the settlements' queues by slot group: the plan's groups first, in
    plan order (claims go through them in that order), then settle-only groups.
    Settlements keep their order inside a group (requeues rely on it)."""
    groups: dict[int, WorkGroup] = {}
    for queue, quota in plan:
        groups.setdefault(layout.group(queue), WorkGroup()).plan.append((queue, quota))
    for s in settlements:
        groups.setdefault(layout.group(s.delivery.queue), WorkGroup()).settlements.append(s)
    return list(groups.values())


def work(
    layout: Layout,
    group: WorkGroup,
    *,
    dead_ttl_ms: int,
    lease_ms: int = 0,
    n: int = 0,
    worker: str = "",
    run_now: int = 0,
    alive_ms: int = 0,
    held: int = 0,
) -> Call:
    """claim.lua / settle.lua / exchange.lua's call for one group."""
    names = list(
        dict.fromkeys([q for q, _ in group.plan] + [s.delivery.queue for s in group.settlements])
    )
    block = {q: i + 1 for i, q in enumerate(names)}
    call = Call([k for q in names for k in layout.queue_block(q)])
    call.args = [dead_ttl_ms, lease_ms, n, worker, run_now, alive_ms, held, len(names), *names]
    call.args.append(len(group.plan))
    for queue, quota in group.plan:
        call.args += [block[queue], quota]
    # Plain acks are grouped per queue (one argument each); other ops carry all fields.
    acks: dict[str, tuple[list[str], list[int]]] = {}
    other: list[Any] = []
    for s in group.settlements:
        d = s.delivery
        if s.op == Outcome.ACK and not s.unique_key:
            entries, busy = acks.setdefault(d.queue, ([], [0]))
            entries.append(d.entry)
            busy[0] += s.busy_us
            continue
        unique = 0
        if s.unique_key:
            call.keys.append(layout.uniq(d.queue, s.unique_key))
            unique = len(call.keys)
        # An Outcome is a str: its value is what the script reads.
        other += ["X", s.op, block[d.queue], d.entry, s.payload, s.delay_ms, s.busy_us, unique]
    for queue, (entries, busy) in acks.items():
        call.args += ["A", block[queue], busy[0], len(entries), *entries]
    call.args += other
    return call


def heartbeat(
    layout: Layout,
    queues: Sequence[str],
    held: Sequence[Delivery],
    running: Collection[str],
    *,
    lease_ms: int,
    worker: str,
    info: str,
    ttl_ms: int,
    alive_ms: int,
    sweep: bool,
    register: bool,
) -> Call:
    """heartbeat.lua's call for one group: `queues` (every queue of the group the worker
    claims from or holds tasks of) and the held tasks among them; `register` adds the
    registry (the worker's heartbeat and info)."""
    names = list(dict.fromkeys([*queues, *(d.queue for d in held)]))
    block = {q: i + 1 for i, q in enumerate(names)}
    call = Call([k for q in names for k in layout.queue_block(q)])
    if register:
        call.keys += layout.registry[1:]
    call.args = [lease_ms, worker, info, ttl_ms, alive_ms, 1 if sweep else 0]
    call.args += [1 if register else 0, len(names), *names]
    for d in held:
        call.args += [block[d.queue], d.entry, 1 if d.entry in running else 0]
    return call


def stats(layout: Layout, queues: Sequence[str], worker_ttl_ms: int, registry: bool) -> Call:
    """stats.lua's call for the queues of one group (and the workers, with `registry`)."""
    call = Call([k for q in queues for k in layout.queue_block(q)])
    if registry:
        call.keys += layout.registry[1:]
    call.args = [worker_ttl_ms, 1 if registry else 0, len(queues), *queues]
    return call


def enqueue(
    layout: Layout, queue: str, chunk: Sequence[Outgoing], max_backlog: int, unique_ttl_ms: int
) -> Call:
    """enqueue.lua's call for one chunk (messages sharing priority, delay and key)."""
    head = chunk[0]
    call = Call(layout.enqueue_block(queue))
    if head.key:
        call.keys.append(layout.uniq(queue, head.key))
    call.args = [queue, max_backlog, unique_ttl_ms, head.priority, head.delay_ms]
    call.args += [1 if head.key else 0, "\n".join(m.payload for m in chunk), layout.wake_channel]
    return call


def dlq(layout: Layout, op: str, queue: str, rest: Sequence[Any]) -> Call:
    return Call(layout.queue_block(queue), [op, queue, *rest])
