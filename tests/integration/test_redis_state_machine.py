"""The Redis task state machine against a real Redis (docs/runtime.md, "State machine"):
bad input of any shape dies and never stalls the worker, claims are fenced, only started
tasks count as lost, a dead worker's tasks come back fast, delayed tasks show as due, and
a Redis that may evict keys is refused."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid

import ebbtide
import pytest
import redis
from ebbtide.brokers.redis.broker import RedisBroker
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from support import http
from support.servers import free_port, redis_process
from worker_testkit import wait_for

pytestmark = pytest.mark.redis

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
TASKISH = st.fixed_dictionaries(
    {"task": st.text(max_size=12) | JSON},
    optional={"args": JSON, "kwargs": JSON, "attempt": JSON, "id": JSON, "key": JSON},
)
PAYLOADS = st.one_of(
    st.binary(max_size=64),
    JSON.map(lambda v: json.dumps(v).encode()),  # NaN and Infinity included
    TASKISH.map(lambda v: json.dumps(v).encode()),
)


def dead_member(rec: redis.Redis, task_id: str) -> bool:
    return rec.zscore("ebbtide:q:{default}:dead", f"0|{task_id}") is not None


def test_fuzzed_payloads_all_die_and_the_worker_keeps_claiming(redis_broker):
    """Any bytes, any JSON, stored as a task: each ends dead with a reason, the worker
    survives, and a good task sent after them all still runs."""
    broker = redis_broker
    registered = set(broker.tasks.app.tasks)
    broker.tasks.record.send("fuzz-first", 0)
    with broker.worker("--unknown-task-grace-seconds", "0", "--concurrency", "2") as proc:
        wait_for(lambda: broker.done("fuzz-first"), what="the first good task")

        @settings(
            max_examples=80,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(payload=PAYLOADS)
        def one(payload: bytes) -> None:
            try:
                body = json.loads(payload)
            except ValueError:
                body = None
            assume(not (isinstance(body, dict) and str(body.get("task")) in registered))
            task_id = f"fuzz-{uuid.uuid4().hex}"
            broker.inject(task_id, payload)
            wait_for(lambda: dead_member(broker.rec, task_id), 30, f"{payload!r} dead")
            reason = json.loads(broker.rec.hget("ebbtide:q:{default}:msgs", task_id))["error"]
            assert reason, payload
            assert proc.poll() is None, "the worker died on its input"

        one()
        broker.tasks.record.send("fuzz-last", 1)
        wait_for(lambda: broker.done("fuzz-last"), what="a good task after all the bad ones")
        assert proc.poll() is None
        # A task records itself before its ack: wait while the worker lives (leaving the
        # block SIGKILLs it, and an ack not yet sent would then never come).
        wait_for(
            lambda: (q := broker.queue()).in_flight == 0 and q.ready == 0,
            what="nothing left in flight or ready",
        )


def metric(port: int, name: str) -> float:
    got = http.get(port, "/metrics")
    for line in got[1].splitlines() if got else ():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_a_paused_worker_is_fenced_out(redis_broker):
    """Worker A is frozen past its liveness holding a task; B takes the task over and
    completes it. When A wakes, its renewal and its ack are refused (counted), so the
    task is completed once in the broker's books, and nothing is left in flight."""
    broker = redis_broker
    broker.tasks.gated.send("fence", 0)
    port = free_port()
    with broker.worker("--metrics-port", str(port), "--metrics-host", "127.0.0.1") as a:
        wait_for(lambda: broker.started("fence") == ["0"], what="A running the task")
        a.send_signal(signal.SIGSTOP)
        try:
            with broker.worker():
                wait_for(lambda: len(broker.started("fence")) == 2, what="B taking over")
                broker.open_gate("fence")
                wait_for(lambda: len(broker.done("fence")) >= 1, what="B completing it")
                a.send_signal(signal.SIGCONT)
                wait_for(
                    lambda: (
                        metric(port, "ebbtide_worker_leases_lost_total")
                        + metric(port, "ebbtide_worker_stale_settlements_total")
                        >= 1
                    ),
                    what="A's stale writes refused and counted",
                )
                wait_for(lambda: broker.queue().in_flight == 0, what="nothing left in flight")
        finally:
            a.send_signal(signal.SIGCONT)
    q = broker.queue()
    assert (q.completed_total, q.dead, q.ready, q.delayed) == (1, 0, 0, 0)


def test_only_started_tasks_count_as_lost_and_a_dead_worker_is_noticed_fast(redis_broker):
    """SIGKILL a worker running one task with three prefetched behind it (lease 30 s):
    its tasks come back within seconds (its liveness, not the lease), and only the
    running one carries a recovery."""
    broker = redis_broker
    broker.tasks.gated.send_many(("lost", i) for i in range(4))
    lease = ("--lease-seconds", "30", "--concurrency", "1", "--prefetch", "3")
    with broker.worker(*lease) as victim:
        wait_for(lambda: broker.queue().in_flight == 4, what="all four claimed")
        wait_for(lambda: broker.started("lost") == ["0"], what="the first one running")
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    killed = time.monotonic()
    # Any claim on that queue reclaims them (each queue keeps its workers' liveness): a
    # claim of nothing does, without running them.
    probe = RedisBroker(broker.url)

    def reclaimed() -> bool:
        asyncio.run(_claim_nothing(probe, "default"))
        return broker.queue().ready == 4

    wait_for(reclaimed, 20, what="the four back, ready")
    assert time.monotonic() - killed < 15, "came back on liveness, not the 30 s lease"
    lost = broker.rec.hgetall("ebbtide:q:{default}:lost")
    assert list(lost.values()) == ["1"], lost  # the running one only
    broker.open_gate("lost")
    with broker.worker():
        wait_for(lambda: len(broker.done("lost")) == 4, what="all four done")
    assert broker.rec.hlen("ebbtide:q:{default}:lost") == 0  # forgotten once finished


async def _claim_nothing(probe: RedisBroker, queue: str) -> None:
    await probe.aconnect()
    try:
        await probe.claim([(queue, 0)], 0, 1000)
    finally:
        await probe.aclose()


def test_a_task_a_worker_was_lost_with_runs_alone(redis_broker):
    """A task with a recovery counted is claimed only by a worker holding nothing, as the
    only task of its claim, and nothing more is claimed until it is settled: if it kills
    its worker again, no task beside it is lost (and counted) with it."""
    broker = redis_broker
    ids = broker.tasks.gated.send_many(("alone", i) for i in range(4))
    broker.rec.hset("ebbtide:q:{default}:lost", ids[0], 1)  # as a recovery leaves it
    with broker.worker("--concurrency", "4"):
        wait_for(lambda: broker.started("alone") == ["0"], what="the lost task running")
        q = broker.queue()
        assert (q.ready, q.in_flight) == (3, 1), q  # four free slots, one task held
        broker.open_gate("alone")
        wait_for(lambda: len(broker.done("alone")) == 4, what="all four done")
    assert sorted(broker.started("alone")) == ["0", "1", "2", "3"]


def test_a_task_lost_more_than_max_recoveries_times_dies_unrun(redis_broker):
    broker = redis_broker
    task_id = broker.tasks.record.send("poison-count", 0)
    broker.rec.hset("ebbtide:q:{default}:lost", task_id, 4)  # lost four times already
    with broker.worker():
        wait_for(lambda: dead_member(broker.rec, task_id), what="the task in the DLQ")
    assert broker.done("poison-count") == []
    (dead,) = broker.dlq()
    assert dead["error"] == "worker lost 4 times"


def test_delayed_tasks_show_as_due_for_the_operator(redis_broker):
    """With no worker at all, delayed tasks whose time came are reported as due, and
    the next due time is reported, so the operator can scale up from zero."""
    broker = redis_broker
    record = broker.tasks.record
    record.options(delay=0.2).send_many([("due", 0), ("due", 1)])
    record.options(delay=600).send("later", 0)
    now = broker.stats().now
    wait_for(lambda: broker.queue().due == 2, 10, what="two delayed tasks due")
    q = broker.queue()
    assert q.delayed == 3 and q.ready == 0
    assert q.next_due_at is not None and q.next_due_at <= now + 1
    empty = redis_broker.stats(["nothing"]).queues["nothing"]
    assert (empty.due, empty.next_due_at) == (0, None)


def test_a_payload_gone_from_redis_is_buried_not_dropped(redis_broker):
    broker = redis_broker
    task_id = broker.tasks.record.send("evicted", 0)
    broker.rec.hdel("ebbtide:q:{default}:msgs", task_id)  # as an eviction would
    with broker.worker():
        wait_for(lambda: dead_member(broker.rec, task_id), what="the task in the DLQ")
    (dead,) = broker.dlq()
    assert "payload evicted" in dead["error"]
    assert broker.queue().completed_total == 1


def test_a_redis_that_may_evict_is_refused_and_a_safe_one_is_not():
    with redis_process("--maxmemory-policy", "allkeys-random") as server:
        app = ebbtide.App(broker_url=server.url)
        task = app.task(lambda: None, name="t")
        with pytest.raises(ebbtide.BrokerEvicts, match="allkeys-random.*noeviction"):
            task.send()
        app.close()
    with redis_process("--maxmemory-policy", "volatile-lru") as server:
        app = ebbtide.App(broker_url=server.url)
        assert app.task(lambda: None, name="t").send()  # only keys with a TTL go
        app.close()


def test_send_many_that_fails_part_way_says_which_tasks_were_stored():
    """Out of memory on a later 1,000-task script: the error lists what was stored."""
    with redis_process("--maxmemory", "2mb", "--maxmemory-policy", "noeviction") as server:
        app = ebbtide.App(broker_url=server.url)
        task = app.task(lambda *a: None, name="t")
        with pytest.raises(ebbtide.PartiallyEnqueued) as raised:
            task.send_many(("x" * 300, i) for i in range(20_000))
        stored = raised.value.accepted
        assert 0 < len(stored) < 20_000 and len(stored) % 1000 == 0
        client = redis.Redis.from_url(server.url, decode_responses=True)
        assert client.hlen("ebbtide:q:{default}:msgs") == len(stored)
        assert set(client.hkeys("ebbtide:q:{default}:msgs")) == set(stored)
        client.close()
        app.close()


def test_key_prefix_comes_from_the_environment(monkeypatch, redis_broker):
    monkeypatch.setenv("EBBTIDE_KEY_PREFIX", "tenant-a")
    app = ebbtide.App(broker_url=redis_broker.url)
    assert app.key_prefix == "tenant-a"
    assert ebbtide.App(broker_url=redis_broker.url, key_prefix="explicit").key_prefix == "explicit"
    app.task(lambda: None, name="t").send()
    assert redis_broker.rec.exists("tenant-a:q:{default}:msgs")
    stats = ebbtide.read_stats(redis_broker.url, prefix="tenant-a")
    assert stats.queues["default"].ready == 1
    app.close()


ALIVE_MS = 400  # the liveness window of the workers below


async def _bound(url: str, worker_id: str) -> RedisBroker:
    worker = RedisBroker(url)
    worker.bind_worker(worker_id, ALIVE_MS)
    await worker.aconnect()
    return worker


def _past_liveness(rec: redis.Redis, worker_id: str) -> bool:
    seconds, micros = rec.time()
    deadline = rec.zscore("ebbtide:q:{default}:alive", worker_id)
    return deadline is not None and deadline < int(seconds) * 1000 + int(micros) // 1000


def test_a_stall_of_every_worker_takes_none_of_them_for_dead(redis_broker):
    """Worker A runs a task, then nobody calls on the queue for longer than A's liveness
    (the node starved every pod, broker included). B's first claim after the stall
    leaves A's task with A: the unobserved time does not count. A still silent while B
    goes on calling is then taken for dead, and its task comes back."""
    broker = redis_broker
    task_id = broker.tasks.record.send("stalled", 0)

    async def main() -> None:
        a = await _bound(broker.url, "worker-a")
        b = await _bound(broker.url, "worker-b")
        try:
            assert len(await a.claim([("default", 0)], 1, 30_000, run_now=1)) == 1
            # The stall itself (the fault, not a wait for a condition): no call at all
            # for 2.5 liveness windows.
            await asyncio.sleep(2.5 * ALIVE_MS / 1000)
            assert await b.claim([("default", 0)], 1, 30_000) == []
            q = broker.queue()
            assert (q.in_flight, q.ready) == (1, 0), "A's task was taken back after a stall"

            async def a_taken_for_dead() -> bool:
                await b.claim([("default", 0)], 0, 30_000)
                return broker.queue().ready == 1

            deadline = time.monotonic() + 10
            while not await a_taken_for_dead():
                assert time.monotonic() < deadline, "A's task never came back"
                await asyncio.sleep(0.05)
        finally:
            await a.aclose()
            await b.aclose()

    asyncio.run(main())
    assert broker.rec.hget("ebbtide:q:{default}:lost", task_id) == "1"  # it had started


def test_a_worker_back_from_a_stall_of_its_own_keeps_its_running_tasks(redis_broker):
    """A stalls alone past its liveness while B's heartbeats keep the queue observed; A's
    own next claim renews A before it reclaims anything, so it never takes back (to run
    a second time) the task it is running."""
    broker = redis_broker
    broker.tasks.record.send("own", 0)

    async def main() -> None:
        a = await _bound(broker.url, "worker-a")
        b = await _bound(broker.url, "worker-b")
        try:
            assert len(await a.claim([("default", 0)], 1, 30_000, run_now=1)) == 1
            assert await b.claim([("default", 0)], 0, 30_000) == []  # B's queue: default
            deadline = time.monotonic() + 10
            while not _past_liveness(broker.rec, "worker-a"):
                assert time.monotonic() < deadline, "A's liveness never ran out"
                await b.renew("worker-b", "{}", [], (), 30_000, 30_000)
                await asyncio.sleep(0.02)
            assert await a.claim([("default", 0)], 1, 30_000) == []
            q = broker.queue()
            assert (q.in_flight, q.ready) == (1, 0), "A took back its own running task"
        finally:
            await a.aclose()
            await b.aclose()

    asyncio.run(main())
