"""The rest of the Redis framing: enqueue replies, chunks, stats replies."""

from __future__ import annotations

import json

from ebbtide.brokers.base import DeadTask, Outgoing
from ebbtide.brokers.redis import wire


def out(i: int, priority: int = 0, key: str = "") -> Outgoing:
    return Outgoing(f"id{i}", priority, 0, key, "{}")


def test_chunks_group_runs_of_equal_priority_delay_and_key():
    messages = [out(0), out(1), out(2, priority=5), out(3, key="k"), out(4)]
    assert [[m.task_id for m in c] for c in wire.chunks(messages)] == [
        ["id0", "id1"],
        ["id2"],
        ["id3"],
        ["id4"],
    ]
    many = [out(i) for i in range(wire.ENQUEUE_CHUNK + 1)]
    assert [len(c) for c in wire.chunks(many)] == [wire.ENQUEUE_CHUNK, 1]


def test_enqueue_replies_name_duplicates_and_refusals():
    chunked = [[out(0), out(1), out(2)], [out(3)]]
    assert wire.enqueue_replies(chunked, [[".=!", ["pending"]], [".", []]]) == [
        "id0",
        "=pending",
        "!full",
        "id3",
    ]


def test_members():
    assert wire.member_id("7|abc|d") == "abc|d"
    dead = [DeadTask("a", "0|x", "x", 0, ""), DeadTask("b", "0|y", "y", 0, "")]
    assert {q: [d.task_id for d in ds] for q, ds in wire.by_queue(dead).items()} == {
        "a": ["x"],
        "b": ["y"],
    }


def test_stats_replies_become_broker_stats_and_skip_corrupt_heartbeats():
    beat = json.dumps({"worker_id": "w", "running": 1, "concurrency": 8, "queues": ["q"]})
    # Lua numbers arrive as ints, strings as bytes (decode_responses=False).
    row = [b"q", [1, 0, 0, 0, 0, 0, 0, 0, 0, 2], 1500, 4, 5, 6, 7, 8, 2_500_000, 3, 9000]
    raw = [[b"10", b"500000"], [row], [beat.encode(), b"not json", b"[1]"]]
    stats = wire.parse_stats(wire.decode(raw))
    q = stats.queues["q"]
    assert stats.now == 10.5 and q.ready == 3 and q.ready_by_priority == {0: 1, 9: 2}
    assert (q.oldest_ready_at, q.in_flight, q.delayed, q.dead) == (1.5, 4, 5, 6)
    assert (q.enqueued_total, q.completed_total, q.busy_seconds_total) == (7, 8, 2.5)
    assert (q.due, q.next_due_at) == (3, 9.0)
    idle = [b"r", [0] * 10, -1, 0, 0, 0, 0, 0, 0, 0, -1]
    r = wire.parse_stats(wire.decode([[b"1", b"0"], [idle], []])).queues["r"]
    assert (r.due, r.next_due_at, r.oldest_ready_at) == (0, None, None)
    assert [w.worker_id for w in stats.workers] == ["w"] and stats.workers[0].last_seen == 10.5
