"""Sharded queues, the pure parts: names, the stable hash, round-robin, the claim plan's
fair drain over shards, the summing of statistics, and the App's choice of shard."""

from __future__ import annotations

from collections import Counter

import ebbtide
import pytest
from ebbtide.brokers.base import BrokerStats, QueueStats, WorkerInfo
from ebbtide.message import is_queue_name
from ebbtide.selection import parse_queues, plan_claim, spread
from ebbtide.shards import (
    RoundRobin,
    is_broker_queue_name,
    logical_queue,
    parse_counts,
    shard_name,
    shard_names,
    shard_of,
    split_shard,
    sum_shards,
)


def test_shard_zero_is_the_queue_itself_and_the_others_are_derived():
    assert shard_names("emails", 4) == ["emails", "emails~1", "emails~2", "emails~3"]
    assert split_shard("emails~3") == ("emails", 3)
    assert split_shard("emails") == ("emails", 0)
    assert logical_queue("emails~255") == "emails"


@pytest.mark.parametrize("name", ["emails~0", "emails~03", "emails~256", "a~b", "~1", "e~1~2"])
def test_only_the_derived_form_is_a_broker_queue_name(name):
    assert not is_broker_queue_name(name)
    assert logical_queue(name) == name  # a foreign name is left alone


def test_no_user_queue_name_can_collide_with_a_shard():
    assert not is_queue_name("emails~1")
    with pytest.raises(ValueError, match="bad queue name"):
        ebbtide.App(broker_url="redis://unused").queue("emails~1")


def test_the_hash_is_stable_across_processes_and_spreads_keys():
    # Fixed values: blake2b, not Python's per-process salted hash().
    assert [shard_of(f"user-{i}", 8) for i in range(6)] == [
        shard_of(f"user-{i}", 8) for i in range(6)
    ]
    assert (
        shard_of("order-7", 4)
        == int.from_bytes(__import__("hashlib").blake2b(b"order-7", digest_size=8).digest(), "big")
        % 4
    )
    counts = Counter(shard_of(f"k{i}", 8) for i in range(8000))
    assert set(counts) == set(range(8)) and min(counts.values()) > 850


def test_round_robin_visits_every_shard_in_turn():
    rr = RoundRobin()
    picks = [rr.next("q", 4) for _ in range(12)]
    assert Counter(picks) == {0: 3, 1: 3, 2: 3, 3: 3}
    assert all((b - a) % 4 == 1 for a, b in zip(picks, picks[1:], strict=False))


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("emails", "QUEUE=COUNT"),
        ("emails=0", "1..256"),
        ("emails=300", "1..256"),
        ("emails=2,emails=3", "twice"),
        ("worker.x=2", "reserved"),
        ("a~1=2", "bad queue name"),
    ],
)
def test_bad_shard_counts_are_refused_naming_the_item(text, error):
    with pytest.raises(ValueError, match=error):
        parse_counts(text, "EBBTIDE_SHARDS")


def test_spread_splits_a_quota_from_a_rotating_start():
    assert spread("q", 64, 4, turn=1) == [("q~1", 16), ("q~2", 16), ("q~3", 16), ("q", 16)]
    assert spread("q", 10, 4, turn=1, chunk=1) == [("q~1", 3), ("q~2", 3), ("q~3", 3), ("q", 1)]
    # A small claim goes to few shards (at least `chunk` each), from the rotating start.
    assert spread("q", 10, 4, turn=2) == [("q~2", 8), ("q~3", 2), ("q", 0), ("q~1", 0)]
    assert spread("q", 1, 3, turn=5) == [("q~2", 1), ("q", 0), ("q~1", 0)]
    assert spread("q", 7, 1, turn=3) == [("q", 7)]


def test_every_claim_plan_names_every_shard_and_keeps_the_logical_weights():
    selection = parse_queues("a:3,b:1").with_shards({"a": 4})
    for turn in range(20):
        plan = plan_claim(selection, 8, turn=turn)
        assert sorted(q for q, _ in plan) == sorted(selection.broker_queues())
        assert sum(n for _, n in plan) == 8
    total = Counter()
    for turn in range(4000):
        for q, n in plan_claim(selection, 4, turn=turn):
            total[logical_queue(q)] += n
    assert 2.7 < total["a"] / total["b"] < 3.3  # weights stay between logical queues


def test_fair_drain_every_non_empty_shard_is_served():
    """Simulated claims (the scripts' rule: quotas first in plan order, then fill in
    order) over shards of very uneven depth: over the rounds every shard with work is
    served, and no shard waits more than K rounds for its turn at the head."""
    depth = {"q": 1000, "q~1": 3, "q~2": 0, "q~3": 500, "q~4": 7}
    selection = parse_queues("q").with_shards({"q": 5})
    served: Counter[str] = Counter()
    last_head: dict[str, int] = {}
    for turn in range(1, 200):
        plan = plan_claim(selection, 2, turn=turn)
        last_head[plan[0][0]] = turn
        left = 2
        for pass_no in (0, 1):
            for q, quota in plan:
                take = min(depth[q], left, quota if pass_no == 0 else left)
                depth[q] -= take
                served[q] += take
                left -= take
        assert all(turn - last_head.get(q, 0) < 5 for q in depth) or turn < 5
    assert all(served[q] > 0 for q in ("q", "q~1", "q~3", "q~4"))
    assert depth["q~1"] == depth["q~4"] == 0  # the shallow shards were not starved


def _q(name: str, **kw) -> QueueStats:
    return QueueStats(queue=name, **{"ready": 0, **kw})


def test_sum_shards_adds_counters_and_keeps_the_earliest_times():
    stats = BrokerStats(
        now=100.0,
        queues={
            "e": _q("e", ready=2, ready_by_priority={0: 2}, oldest_ready_at=90.0, enqueued_total=5),
            "e~1": _q(
                "e~1",
                ready=3,
                ready_by_priority={0: 1, 5: 2},
                oldest_ready_at=80.0,
                in_flight=1,
                delayed=2,
                due=1,
                next_due_at=99.0,
                dead=1,
                completed_total=4,
                busy_seconds_total=1.5,
                enqueued_total=7,
            ),
            "other": _q("other", ready=9),
        },
        workers=(WorkerInfo("w", None, True, 1, 4, ("e", "e~1", "other"), 99.0),),
    )
    summed = sum_shards(stats)
    e = summed.stats.queues["e"]
    assert (e.ready, e.in_flight, e.delayed, e.due, e.dead) == (5, 1, 2, 1, 1)
    assert e.ready_by_priority == {0: 3, 5: 2}
    assert (e.oldest_ready_at, e.next_due_at) == (80.0, 99.0)
    assert (e.enqueued_total, e.completed_total, e.busy_seconds_total) == (12, 4, 1.5)
    assert summed.stats.queues["other"].ready == 9 and "other" not in summed.shards
    assert sorted(summed.shards["e"]) == [0, 1]
    assert summed.stats.oldest_age_s("e") == 20.0
    assert summed.stats.workers[0].queues == ("e", "other")


class _Recorder:
    """A broker that records the enqueues (the App's shard choice is pure logic)."""

    url = "redis://unused"

    def __init__(self) -> None:
        self.calls: list[tuple[str, list]] = []

    def enqueue(self, queue, messages, max_backlog, unique_ttl_ms):
        self.calls.append((queue, list(messages), max_backlog))
        return [m.task_id for m in messages]


@pytest.fixture
def app(monkeypatch):
    monkeypatch.delenv("EBBTIDE_SHARDS", raising=False)
    application = ebbtide.App(broker_url="redis://unused", shards={"e": 4})
    application.queue("e", max_backlog=10, shards=4)
    application._broker = _Recorder()
    return application


def test_keyed_and_shard_keyed_sends_go_to_the_shard_their_key_picks(app):
    @app.task(name="t", queue="e")
    def t(x): ...

    t.options(key="order-1").send(1)
    t.options(key="order-1").send(2)
    t.options(shard_key="user-9").send(3)
    queues = [q for q, _, _ in app.broker.calls]
    assert queues[0] == queues[1] == shard_name("e", shard_of("order-1", 4))
    assert queues[2] == shard_name("e", shard_of("user-9", 4))
    assert all(limit == 3 for _, _, limit in app.broker.calls)  # max_backlog 10 over 4
    with pytest.raises(ValueError, match="not both"):
        t.options(key="a", shard_key="b")


def test_send_many_and_batch_group_per_shard_and_keep_the_order(app):
    @app.task(name="t", queue="e")
    def t(x): ...

    ids = t.send_many(range(8))
    assert len(app.broker.calls) == 4 and {len(m) for _, m, _ in app.broker.calls} == {2}
    stored = [m.task_id for _, ms, _ in app.broker.calls for m in ms]
    assert sorted(stored) == ids  # ids are a counter: the call's order, whatever the shard
    app.broker.calls.clear()
    with app.batch() as batch:
        t.send(1)
        t.send_many(range(3))
        assert sorted(batch.queues) == shard_names("e", 4)
    assert len(app.broker.calls) == 4


def test_the_deployment_count_beats_the_code_and_workers_drain_the_most(monkeypatch):
    monkeypatch.setenv("EBBTIDE_SHARDS", "e=2")
    monkeypatch.setenv("EBBTIDE_DRAIN_SHARDS", "e=6")
    application = ebbtide.App(broker_url="redis://unused")

    @application.task(name="t", queue="e", shards=4)
    def t(x): ...

    assert application.shard_count("e") == 2
    assert application.drained_shards("e") == 6
    with pytest.raises(ValueError, match="declared with 4 shards"):
        application.task(name="u", queue="e", shards=8)(lambda: None)
    monkeypatch.setenv("EBBTIDE_SHARDS", "e=zero")
    with pytest.raises(ValueError, match="EBBTIDE_SHARDS"):
        ebbtide.App(broker_url="redis://unused")
