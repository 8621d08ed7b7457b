"""Pure encoding between the worker and the Lua scripts."""

from __future__ import annotations

from ebbtide.brokers.base import Delivery, Settlement
from ebbtide.brokers.redis.wire import heartbeat_args, parse_framed, settle_args, stored_ids
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
    args = settle_args(
        "p",
        [
            Settlement(Outcome.ACK, a1, busy_us=5),
            Settlement(Outcome.REQUEUE, b1),
            Settlement(Outcome.ACK, a2, busy_us=7),
            Settlement(Outcome.ACK, b1, unique_key="k"),
        ],
        1000,
    )
    assert args == [
        "p", 1000,
        "A", "a", 12, 2, "1|0|x", "1|0|y",
        "X", "requeue", "b", "1|0|z", "", 0, 0, "",
        "X", "ack", "b", "1|0|z", "", 0, 0, "k",
    ]  # fmt: skip


def test_heartbeat_marks_only_running_entries_started():
    a, b = Delivery("a", "1|0|1.x", ""), Delivery("b", "1|0|1.y", "")
    assert heartbeat_args([a, b], {"1|0|1.y"}) == ["a", "1|0|1.x", 0, "b", "1|0|1.y", 1]


def test_stored_ids_name_every_task_a_partly_failed_send_many_stored():
    from ebbtide.brokers.base import Outgoing

    chunked = [[Outgoing(f"id{i}", 0, 0, "", "{}") for i in range(j, j + 2)] for j in (0, 2, 4)]
    oom = RuntimeError("OOM command not allowed when used memory > 'maxmemory'")
    accepted, error = stored_ids(chunked, [[".=", ["old"]], oom, ["..", []]])
    assert accepted == ["id0", "old", "id4", "id5"] and error is oom
    assert stored_ids(chunked[:1], [["..", []]]) == (["id0", "id1"], None)
