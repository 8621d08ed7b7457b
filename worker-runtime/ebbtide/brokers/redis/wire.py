"""The framing between Python and the Lua scripts: pure functions, no I/O, so they are
unit-tested directly. The formats are the scripts' (see the ARGV comments in lua/)."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Sequence
from typing import Any

from ...lifecycle import Outcome
from ...message import MAX_PRIORITY
from ..base import BrokerStats, DeadTask, Delivery, Outgoing, QueueStats, Settlement, worker_info

ENQUEUE_CHUNK = 1000  # messages per EVALSHA in send_many: bounds a script's run time


def settle_args(prefix: str, settlements: Sequence[Settlement], dead_ttl_ms: int) -> list[Any]:
    """Plain acks are grouped per queue (one argument each); other ops carry all fields."""
    acks: dict[str, tuple[list[str], list[int]]] = {}
    other: list[Any] = []
    for s in settlements:
        d = s.delivery
        if s.op == Outcome.ACK and not s.unique_key:
            entries, busy = acks.setdefault(d.queue, ([], [0]))
            entries.append(d.entry)
            busy[0] += s.busy_us
        else:
            # An Outcome is a str: its value is what the script reads.
            other += ["X", s.op, d.queue, d.entry, s.payload, s.delay_ms, s.busy_us, s.unique_key]
    args: list[Any] = [prefix, dead_ttl_ms]
    # Unchanged order inside each kind: requeues (LPUSH) rely on it.
    for queue, (entries, busy) in acks.items():
        args += ["A", queue, busy[0], len(entries), *entries]
    return args + other


def plan_args(plan: Sequence[tuple[str, int]]) -> list[Any]:
    """(queue, quota) pairs, flattened as claim.lua and exchange.lua read them."""
    args: list[Any] = []
    for queue, quota in plan:
        args += [queue, quota]
    return args


def parse_framed(blob: bytes) -> list[Delivery]:
    """Split "<queue>\\n<handle>\\n<recoveries>\\n<payload length>\\n<payload>"*
    (lengths in bytes)."""
    out: list[Delivery] = []
    pos, end, find = 0, len(blob), blob.find
    names: dict[bytes, str] = {}
    while pos < end:
        a = find(b"\n", pos)
        b = find(b"\n", a + 1)
        r = find(b"\n", b + 1)
        c = find(b"\n", r + 1)
        stop = c + 1 + int(blob[r + 1 : c])
        raw_queue = blob[pos:a]
        queue = names.get(raw_queue)
        if queue is None:
            queue = names[raw_queue] = raw_queue.decode()
        recoveries = int(blob[b + 1 : r])
        out.append(Delivery(queue, blob[a + 1 : b].decode(), blob[c + 1 : stop], recoveries))
        pos = stop
    return out


def heartbeat_args(held: Sequence[Delivery], running: Collection[str]) -> list[Any]:
    """(queue, handle, running 0|1) triples, as heartbeat.lua reads them: a running task
    is marked started, so losing it counts as a recovery (a prefetched one does not)."""
    args: list[Any] = []
    for d in held:
        args += [d.queue, d.entry, 1 if d.entry in running else 0]
    return args


def stored_ids(
    chunked: Sequence[Sequence[Outgoing]], results: Sequence[Any]
) -> tuple[list[str], BaseException | None]:
    """After a pipelined send_many whose replies may hold errors: the ids of the tasks
    stored (in order, up to the first failed chunk; later chunks may have been stored
    too, and are listed as well), and the first error."""
    accepted: list[str] = []
    first: BaseException | None = None
    for chunk, result in zip(chunked, results, strict=True):
        if isinstance(result, BaseException):
            first = first or result
            continue
        for reply in enqueue_replies([chunk], [result]):
            if reply != "!full":
                accepted.append(reply[1:] if reply.startswith("=") else reply)
    return accepted, first


def chunks(messages: Sequence[Outgoing]) -> Iterator[Sequence[Outgoing]]:
    """Runs of at most ENQUEUE_CHUNK messages with the same priority, delay and key."""
    start = 0
    while start < len(messages):
        first = messages[start]
        end = start + 1
        limit = min(len(messages), start + ENQUEUE_CHUNK)
        while end < limit and (
            (m := messages[end]).priority == first.priority
            and m.delay_ms == first.delay_ms
            and m.key == first.key
        ):
            end += 1
        yield messages[start:end]
        start = end


def enqueue_replies(chunked: Sequence[Sequence[Outgoing]], results: Sequence[Any]) -> list[str]:
    """Per message its id, '=<pending id>' for a duplicate key, or '!full', from each
    chunk's {status characters, duplicate ids} reply."""
    replies: list[str] = []
    for chunk, (status, dups) in zip(chunked, results, strict=True):
        pending = iter(dups)
        for m, mark in zip(chunk, status, strict=True):
            if mark == ".":
                replies.append(m.task_id)
            elif mark == "=":
                replies.append("=" + next(pending))
            else:
                replies.append("!full")
    return replies


def member_id(member: str) -> str:
    """The task id of a delayed or dead member "<prio>|<id>"."""
    return member.partition("|")[2]


def by_queue(dead: Sequence[DeadTask]) -> dict[str, list[DeadTask]]:
    grouped: dict[str, list[DeadTask]] = {}
    for item in dead:
        grouped.setdefault(item.queue, []).append(item)
    return grouped


def decode(value: Any) -> Any:
    """A reply read with decode_responses=False, as text (nested lists included)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def parse_stats(raw: list[Any]) -> BrokerStats:
    """stats.lua's reply (decoded) as BrokerStats."""
    (sec, usec), rows, workers = raw
    now = int(sec) + int(usec) / 1e6
    queues: dict[str, QueueStats] = {}
    for name, ready, oldest, inflight, delayed, dead, enq, done, busy_us, due, nxt in rows:
        by_prio = {p: int(n) for p, n in zip(range(MAX_PRIORITY + 1), ready, strict=True) if n}
        queues[name] = QueueStats(
            queue=name,
            ready=sum(int(n) for n in ready),
            ready_by_priority=by_prio,
            in_flight=int(inflight),
            delayed=int(delayed),
            due=int(due),
            next_due_at=int(nxt) / 1000 if int(nxt) >= 0 else None,
            dead=int(dead),
            oldest_ready_at=int(oldest) / 1000 if int(oldest) >= 0 else None,
            enqueued_total=int(enq),
            completed_total=int(done),
            busy_seconds_total=int(busy_us) / 1e6,
        )
    infos = []
    for text in workers:
        try:
            body = json.loads(text)
        except ValueError:
            continue  # a foreign or corrupt heartbeat never breaks the operator's poll
        info = worker_info(body, now) if isinstance(body, dict) else None
        if info is not None:
            infos.append(info)
    return BrokerStats(now=now, queues=queues, workers=tuple(infos))
