"""Sharded queues on each broker: a queue split into 4 broker queues, filled by key and
round-robin, drained by one real worker; the statistics summed; a unique task dedups in
the shard its key picks; a shrink from 4 to 2 shards loses nothing."""

from __future__ import annotations

import json
from collections import Counter

import ebbtide
import pytest
from ebbtide.shards import shard_name, shard_names, shard_of, sum_shards
from ebbtide.stats import read_stats
from worker_testkit import wait_for

SHARD_APP = "shard_tasks:app"


@pytest.fixture
def app(broker):
    application = ebbtide.App(broker_url=broker.url)
    yield application
    application.close()


def _ready_per_shard(broker, queue: str, count: int, want: int) -> dict[str, int]:
    names = shard_names(queue, count)

    def read():
        got = {n: q.ready for n, q in read_stats(broker.url, names).queues.items()}
        return got if sum(got.values()) == want else None

    return broker.shows(read, f"{want} ready over the shards of {queue}")


def test_a_sharded_queue_is_filled_by_key_and_round_robin_and_drained(app, broker):
    @app.task(name="shard.record", queue="sq", shards=4)
    def record(tag, i): ...

    round_robin = record.send_many(("t", i) for i in range(40))
    keyed = [record.options(shard_key=f"user-{i % 5}").send("t", 100 + i) for i in range(20)]
    assert len(set(round_robin + keyed)) == 60
    expected = Counter(shard_name("sq", shard_of(f"user-{i % 5}", 4)) for i in range(20))
    if broker.is_redis:  # unique tasks are Redis's alone (docs/rabbitmq.md)
        first = record.options(key="order-7").send("t", 200)
        again = record.options(key="order-7").send("t", 201)  # a duplicate, in its shard
        assert again == first
    else:
        record.options(shard_key="order-7").send("t", 200)
    expected[shard_name("sq", shard_of("order-7", 4))] += 1

    per_shard = _ready_per_shard(broker, "sq", 4, 61)
    for name in shard_names("sq", 4):
        assert per_shard[name] == 10 + expected[name], per_shard  # 40 round-robin: 10 each

    summed = sum_shards(read_stats(broker.url, shard_names("sq", 4)))
    assert summed.stats.queues["sq"].ready == 61
    assert sorted(summed.shards["sq"]) == [0, 1, 2, 3]
    shown = broker.cli("stats", "--queues", "sq", "--shards", "sq=4", "--json")
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    assert body["queues"]["sq"]["ready"] == 61 and len(body["shards"]["sq"]) == 4

    def drained():
        q = sum_shards(read_stats(broker.url, shard_names("sq", 4))).stats.queues["sq"]
        return q.ready == q.in_flight == 0 and q.completed_total == 61

    with broker.worker("--concurrency", "4", env={"EBBTIDE_SHARDS": "sq=4"}, app=SHARD_APP):
        wait_for(lambda: len(broker.done("t")) == 61, 30, "61 tasks done")
        # Tasks record themselves before their ack: wait for the acks while the worker
        # lives (leaving the block SIGKILLs it; an unsent ack would put a task back).
        wait_for(drained, 30, "the summed shards: empty, 61 completed")
    assert sorted(map(int, broker.done("t"))) == sorted([*range(40), *range(100, 120), 200])


def test_a_shrink_from_4_to_2_shards_loses_nothing(app, broker):
    @app.task(name="shard.record2", queue="sq2", shards=4)
    def record(tag, i): ...

    record.send_many(("s", i) for i in range(40))
    assert all(n == 10 for n in _ready_per_shard(broker, "sq2", 4, 40).values())
    # The operator's worker after `shards: 2`: sends over 2, still drains all 4.
    env = {"EBBTIDE_SHARDS": "sq2=2", "EBBTIDE_DRAIN_SHARDS": "sq2=4"}
    with broker.worker("--concurrency", "4", env=env, app=SHARD_APP):
        wait_for(lambda: len(broker.done("s")) == 40, 30, "40 tasks done")
        # The acks, while the worker lives (RabbitMQ's management figures are sampled).
        wait_for(
            lambda: (
                sum(
                    q.ready + q.in_flight
                    for q in read_stats(broker.url, shard_names("sq2", 4)).queues.values()
                )
                == 0
            ),
            30,
            "nothing ready or in flight on any of the 4 shards",
        )
    assert sorted(map(int, broker.done("s"))) == list(range(40))


def test_retries_stay_in_their_shard_and_the_dlq_covers_every_shard(app, broker):
    @app.task(name="shard.fail", queue="sq3", shards=2, max_retries=1)
    def fail(tag, i): ...

    fail.send_many(("f", i) for i in range(4))  # round-robin: 2 per shard
    with broker.worker("--concurrency", "2", env={"EBBTIDE_SHARDS": "sq3=2"}, app=SHARD_APP):
        wait_for(lambda: len(broker.done("f")) == 8, 30, "4 tasks run twice (and died)")

        def listed():
            shown = broker.cli("dlq", "list", "--queue", "sq3", "--json")
            assert shown.returncode == 0, shown.stderr
            dead = json.loads(shown.stdout)
            return dead if len(dead) == 4 else None

        dead = wait_for(listed, 30, "4 dead tasks listed for sq3")
    assert {d["queue"] for d in dead} == {"sq3"}
    assert Counter(d["shard"] for d in dead) == {0: 2, 1: 2}  # retried in their shard
    left = broker.cli("dlq", "purge", "--queue", "sq3", "--shards", "sq3=2", "--yes")
    assert left.returncode == 0 and "purged 4" in left.stdout, left.stdout + left.stderr
