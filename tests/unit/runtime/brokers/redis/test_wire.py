"""Pure encoding between the worker and the Lua scripts."""

from __future__ import annotations

from ebbtide.brokers.base import Delivery, Settlement
from ebbtide.brokers.redis import calls
from ebbtide.brokers.redis.keys import QUEUE_KEYS, Layout
from ebbtide.brokers.redis.wire import parse_framed, stored_ids
from ebbtide.lifecycle import Outcome


def test_framed_claims_split_by_byte_length():
    payloads = ['{"a":"é\\n"}'.encode(), b"\n\n", b""]
    blob = b"".join(
        b"q%d\n1|0|7.id%d\n%d\n%d\n" % (i, i, i, len(p)) + p for i, p in enumerate(payloads)
    )
    got = parse_framed(blob)
    assert [(d.queue, d.entry, d.payload, d.recoveries) for d in got] == [
        (f"q{i}", f"1|0|7.id{i}", p, i) for i, p in enumerate(payloads)
    ]
    assert parse_framed(b"") == []


def test_plain_acks_are_grouped_per_queue_and_other_ops_keep_their_order():
    a1, a2, b1 = Delivery("a", "1|0|x", ""), Delivery("a", "1|0|y", ""), Delivery("b", "1|0|z", "")
    settlements = [
        Settlement(Outcome.ACK, a1, busy_us=5),
        Settlement(Outcome.REQUEUE, b1),
        Settlement(Outcome.ACK, a2, busy_us=7),
        Settlement(Outcome.ACK, b1, unique_key="k"),
    ]
    layout = Layout("p")
    (group,) = calls.split_work(layout, [], settlements)
    call = calls.work(layout, group, dead_ttl_ms=1000)
    assert call.keys == layout.queue_block("a") + layout.queue_block("b") + ["p:q:{b}:uniq:k"]
    assert call.args == [
        1000, 0, 0, "", 0, 0, 0, 2, "a", "b", 0,
        "A", 1, 12, 2, "1|0|x", "1|0|y",
        "X", "requeue", 2, "1|0|z", "", 0, 0, 0,
        "X", "ack", 2, "1|0|z", "", 0, 0, 2 * QUEUE_KEYS + 1,
    ]  # fmt: skip


def test_heartbeat_marks_only_running_entries_started():
    a, b = Delivery("a", "1|0|1.x", ""), Delivery("b", "1|0|1.y", "")
    layout = Layout("p")
    ctx = dict(lease_ms=1, worker="w", info="{}", ttl_ms=2, alive_ms=3, sweep=False)
    call = calls.heartbeat(layout, ["c"], [a, b], {"1|0|1.y"}, register=True, **ctx)
    assert call.keys[-2:] == ["p:r:{p}:workers", "p:r:{p}:info"]
    assert call.args[-6:] == [2, "1|0|1.x", 0, 3, "1|0|1.y", 1]  # blocks: c, a, b
    assert call.args[6:11] == [1, 3, "c", "a", "b"]


def test_stored_ids_name_every_task_a_partly_failed_send_many_stored():
    from ebbtide.brokers.base import Outgoing

    chunked = [[Outgoing(f"id{i}", 0, 0, "", "{}") for i in range(j, j + 2)] for j in (0, 2, 4)]
    oom = RuntimeError("OOM command not allowed when used memory > 'maxmemory'")
    accepted, error = stored_ids(chunked, [[".=", ["old"]], oom, ["..", []]])
    assert accepted == ["id0", "old", "id4", "id5"] and error is oom
    assert stored_ids(chunked[:1], [["..", []]]) == (["id0", "id1"], None)
