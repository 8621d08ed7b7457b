"""The framing between Python and the Lua scripts: pure functions, no I/O, so they are
unit-tested directly. The formats are the scripts' (see the ARGV comments in lua/)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from ...message import MAX_PRIORITY
from ..base import BrokerStats, DeadTask, Delivery, Outgoing, QueueStats, worker_info

ENQUEUE_CHUNK = 1000  # messages per EVALSHA in send_many: bounds a script's run time


def group_want(left: int, totals: Sequence[int], i: int) -> int:
    """How many tasks to ask claiming group `i` for (a cluster's plan spans groups, one
    call each, in order) when `left` slots are free: its quotas' total (weighted mode),
    and what the later groups' quotas leave free; everything left in strict mode."""
    later = sum(totals[i + 1 :])
    return max(left - later, min(totals[i], left))


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


def merge_stats(parts: Sequence[BrokerStats]) -> BrokerStats:
    """One BrokerStats from the per-group reads: the first part's clock (the registry's
    call, which also brought the workers)."""
    queues: dict[str, QueueStats] = {}
    for part in parts:
        queues.update(part.queues)
    workers = tuple(w for part in parts for w in part.workers)
    return BrokerStats(now=parts[0].now, queues=queues, workers=workers)


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
