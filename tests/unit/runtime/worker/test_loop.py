"""The Worker against in-memory brokers: what it settles, and that it uses a broker's
optional capabilities (found once, by type) and nothing else."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Sequence

import ebbtide
import pytest
from ebbtide.brokers.base import Broker, Delivery, Exchanging, PushWindow, Settlement
from ebbtide.lifecycle import Outcome
from ebbtide.message import encode_payload
from ebbtide.selection import parse_queues
from ebbtide.worker.loop import Worker


class MemoryBroker:
    """The Broker protocol over a deque: a pull broker without capabilities."""

    url = "memory://"

    def __init__(self, payloads: Sequence[str]) -> None:
        self.ready = deque(
            Delivery("q", f"{int(time.time() * 1000)}|0|id{i}", p.encode())
            for i, p in enumerate(payloads)
        )
        self.settled: list[Settlement] = []
        self.calls: list[str] = []
        self.heartbeats: list[str] = []

    def enqueue(self, queue, messages, max_backlog, unique_ttl_ms):  # pragma: no cover
        raise NotImplementedError

    async def aconnect(self) -> None:
        self.calls.append("aconnect")

    async def aclose(self) -> None:
        self.calls.append("aclose")

    async def claim(self, plan, n: int, lease_ms: int) -> list[Delivery]:
        assert [q for q, _ in plan] == ["q"] and n > 0
        got = []
        while self.ready and len(got) < n:
            got.append(self.ready.popleft())
        return got

    async def settle(self, settlements, dead_ttl_ms: int) -> int:
        self.calls.append("settle")
        self.settled += settlements
        return len(settlements)

    async def heartbeat(self, worker_id, info, held, lease_ms, ttl_ms) -> int:
        self.heartbeats.append(info)
        return len(held)

    async def acquire_rate(self, name, limit, window_ms):
        return 1, 0

    def stats(self, queues, worker_ttl_ms):  # pragma: no cover
        raise NotImplementedError

    def dlq_list(self, queue, limit):  # pragma: no cover
        raise NotImplementedError

    def dlq_replay(self, dead):  # pragma: no cover
        raise NotImplementedError

    def dlq_purge(self, dead):  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        pass


class ExchangingBroker(MemoryBroker):
    """Settles and claims in one call, as Redis does."""

    lost: list[str] = []  # entries the next renew reports given away

    def bind_worker(self, worker_id: str, alive_ms: int) -> None:
        self.calls.append("bind_worker")

    async def exchange(self, settlements, plan, n, lease_ms, dead_ttl_ms, run_now=0, held=0):
        self.calls.append("exchange")
        fenced = set(self.lost)
        self.settled += [s for s in settlements if s.delivery.entry not in fenced]
        mine = [s for s in settlements if s.delivery.entry not in fenced]
        return len(mine), (await self.claim(plan, n, lease_ms) if n else [])

    async def renew(self, worker_id, info, held, running, lease_ms, ttl_ms, sweep=False):
        self.heartbeats.append(info)
        return [d.entry for d in held if d.entry in self.lost]


class PushBroker(MemoryBroker):
    """A prefetch window, as RabbitMQ has."""

    def configure_window(self, concurrency: int, prefetch: int, adaptive: bool) -> None:
        self.calls.append(f"configure_window({concurrency},{prefetch},{adaptive})")

    def window(self) -> int:
        return 32

    async def release(self) -> None:
        self.calls.append("release")


app = ebbtide.App(broker_url="redis://unused", retry_backoff=60.0)


@app.task(name="ok")
def ok(x):
    return x


@app.task(name="fails", max_retries=1)
def fails():
    raise ValueError("boom")


gate = threading.Event()


@app.task(name="gated")
def gated():
    assert gate.wait(10)


@app.task(name="async_ok")
async def async_ok():
    await asyncio.sleep(0)


def payload(task: str, **extra) -> str:
    return encode_payload(f"id-{task}", task, (1,) if task == "ok" else (), {}, 1 << 20, **extra)


def run_worker(broker: MemoryBroker, expected: int, **options) -> Worker:
    app._broker = broker  # the App's lazily opened broker, replaced for the test
    worker = Worker(app, parse_queues("q"), concurrency=2, lease_seconds=3, **options)

    async def main() -> int:
        running = asyncio.create_task(worker.main())
        deadline = time.monotonic() + 10
        while len(broker.settled) < expected:
            assert time.monotonic() < deadline, broker.settled
            assert not running.done()
            await asyncio.sleep(0.005)
        worker.request_stop("test")
        return await asyncio.wait_for(running, 10)

    assert asyncio.run(main()) == 0
    return worker


PAYLOADS = [
    payload("ok"),
    payload("fails"),
    payload("fails", attempt=1),
    payload("async_ok"),
    payload("nobody"),
    "{not json",
]


@pytest.mark.parametrize("kind", [MemoryBroker, ExchangingBroker, PushBroker])
def test_every_delivery_is_settled_as_its_outcome_says(kind):
    broker = kind(PAYLOADS)
    run_worker(broker, len(PAYLOADS))
    by_id = {s.delivery.entry.rsplit("|", 1)[1]: s for s in broker.settled}
    assert by_id["id0"].op is Outcome.ACK
    assert by_id["id1"].op is Outcome.RETRY and by_id["id1"].delay_ms >= 30_000
    assert by_id["id2"].op is Outcome.DEAD  # its one retry was used
    assert by_id["id3"].op is Outcome.ACK  # async
    assert by_id["id4"].op is Outcome.RETRY and "unknown task" in by_id["id4"].payload
    assert by_id["id5"].op is Outcome.DEAD and "undecodable" in by_id["id5"].payload
    assert len(broker.settled) == len(PAYLOADS)
    assert broker.heartbeats[-1] == ""  # deregistered on the way out


def test_capabilities_are_used_when_offered_and_only_then():
    plain, exchanging, push = (
        MemoryBroker(PAYLOADS),
        ExchangingBroker(PAYLOADS),
        PushBroker(PAYLOADS),
    )
    assert isinstance(plain, Broker) and not isinstance(plain, Exchanging | PushWindow)
    run_worker(plain, len(PAYLOADS))
    run_worker(exchanging, len(PAYLOADS))
    run_worker(push, len(PAYLOADS), prefetch=3)
    assert "exchange" not in plain.calls and "settle" in plain.calls
    assert "exchange" in exchanging.calls and "settle" not in exchanging.calls
    assert push.calls.count("configure_window(2,3,False)") == 1  # an explicit --prefetch
    assert push.calls.count("release") == 1 and "exchange" not in push.calls


def test_sigterm_hands_back_what_never_started_in_order_and_lets_the_running_one_finish():
    broker = MemoryBroker([payload("gated")] * 40)
    app._broker = broker
    worker = Worker(app, parse_queues("q"), concurrency=1, prefetch=39, lease_seconds=3)
    gate.clear()

    async def main() -> int:
        running = asyncio.create_task(worker.main())
        deadline = time.monotonic() + 10
        while len(worker.held) < 40 or not worker.running:  # one runs, 39 wait
            assert time.monotonic() < deadline and not running.done()
            await asyncio.sleep(0.001)
        worker.request_stop("test")
        while not broker.settled:  # the hand-back is written before the grace period
            assert time.monotonic() < deadline
            await asyncio.sleep(0.001)
        gate.set()
        return await asyncio.wait_for(running, 10)

    assert asyncio.run(main()) == 0
    ops = [s.op for s in broker.settled]
    assert ops == [Outcome.REQUEUE] * 39 + [Outcome.ACK]
    ids = [int(s.delivery.entry.rsplit("|id", 1)[1]) for s in broker.settled[:39]]
    assert ids == list(range(39, 0, -1))  # LPUSHed newest first: the list keeps its order


def test_bad_input_never_stops_the_loops_and_each_one_dies_naming_its_field():
    """NaN with an unknown name, and an attempt that is not a number on the failure
    path: both used to kill a loop. Now they die and the good task behind them runs."""
    bad = [
        '{"id":"n","task":"nobody","args":[NaN]}',
        '{"id":"a","task":"fails","args":[],"attempt":"three"}',
        '{"id":"e","task":"fails","kwargs":{"x":1e999}}',
    ]
    broker = ExchangingBroker([*bad, payload("ok")])
    worker = run_worker(broker, 4)
    by_id = {s.delivery.entry.rsplit("|", 1)[1]: s for s in broker.settled}
    assert by_id["id3"].op is Outcome.ACK
    for i, field in enumerate(["args", "attempt", "kwargs"]):
        assert by_id[f"id{i}"].op is Outcome.DEAD
        assert f"field '{field}'" in json.loads(by_id[f"id{i}"].payload)["error"]
    assert all(not t.done() for t in worker._loops.values()) or worker.stopping


def test_a_delivery_lost_too_often_is_buried_unrun():
    broker = ExchangingBroker([payload("ok"), payload("ok")])
    broker.ready[0].recoveries = 4  # lost 4 times: over the default max_recoveries of 3
    broker.ready[1].recoveries = 3  # lost 3 times: may run once more
    run_worker(broker, 2)
    by_id = {s.delivery.entry.rsplit("|", 1)[1]: s for s in broker.settled}
    assert by_id["id0"].op is Outcome.DEAD
    assert json.loads(by_id["id0"].payload)["error"] == "worker lost 4 times"
    assert by_id["id1"].op is Outcome.ACK


def test_readyz_fails_when_the_fetch_loop_has_stopped():
    broker = ExchangingBroker([payload("ok")])
    app._broker = broker
    worker = Worker(app, parse_queues("q"), concurrency=1, lease_seconds=3)

    def bug(got) -> None:
        raise RuntimeError("a bug in the fetch loop")

    async def main() -> tuple[bool, str]:
        running = asyncio.create_task(worker.main())
        deadline = time.monotonic() + 10
        while not broker.settled:
            assert time.monotonic() < deadline and not running.done()
            await asyncio.sleep(0.005)
        assert worker._readiness() == (True, "ready")
        worker._accept = bug  # the next claim kills the fetch loop
        broker.ready.append(Delivery("q", "1|0|late", payload("ok").encode()))
        while not worker._loops["fetch"].done():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        verdict = worker._readiness()
        worker.request_stop("test")
        await asyncio.wait_for(running, 10)
        return verdict

    assert asyncio.run(main()) == (False, "fetch loop stopped")


async_gate = asyncio.Event()


@app.task(name="async_waits")
async def async_waits():
    await asyncio.wait_for(async_gate.wait(), 10)


def test_a_task_whose_claim_went_to_another_worker_is_cancelled_and_never_settled():
    broker = ExchangingBroker([payload("async_waits"), payload("ok")])
    app._broker = broker
    worker = Worker(app, parse_queues("q"), concurrency=2, lease_seconds=3)

    async def main() -> None:
        running = asyncio.create_task(worker.main())
        deadline = time.monotonic() + 10
        while len(worker.running) < 1 or not broker.settled:  # the async one runs, ok acked
            assert time.monotonic() < deadline and not running.done()
            await asyncio.sleep(0.005)
        (entry,) = worker.running
        broker.lost.append(entry)  # the next heartbeat learns it was given away
        while worker.running or entry in worker.held:
            assert time.monotonic() < deadline and not running.done()
            await asyncio.sleep(0.005)
        assert not any(r.done() for r in worker.executor.runners)  # only the task stopped
        worker.request_stop("test")
        await asyncio.wait_for(running, 10)

    asyncio.run(main())
    assert [s.op for s in broker.settled] == [Outcome.ACK]  # only the ok one: nothing stale
    assert worker.report.leases_lost == 1


class FarExchangingBroker(ExchangingBroker):
    """An Exchanging broker 10 ms away: each exchange waits a round trip."""

    def __init__(self, payloads: Sequence[str]) -> None:
        super().__init__(payloads)
        self.claim_sizes: list[int] = []

    async def exchange(self, settlements, plan, n, lease_ms, dead_ttl_ms, run_now=0, held=0):
        self.claim_sizes.append(n)
        await asyncio.sleep(0.01)
        return await super().exchange(settlements, plan, n, lease_ms, dead_ttl_ms, run_now, held)


def test_a_far_redis_grows_the_held_bound_unless_prefetch_is_given():
    """Without --prefetch, the worker holds a few exchange round trips of work (here
    well past concurrency + prefetch = 4); an explicit --prefetch pins the bound."""
    far = FarExchangingBroker([payload("ok")] * 600)
    run_worker(far, 600)
    assert max(far.claim_sizes) > 4, far.claim_sizes
    pinned = FarExchangingBroker([payload("ok")] * 200)
    run_worker(pinned, 200, prefetch=2)
    assert max(pinned.claim_sizes) <= 4, pinned.claim_sizes


class LostClaimReplyBroker(ExchangingBroker):
    """The first claim's reply is lost (the worker must sweep); the sweeping heartbeat
    takes a round trip, during which a claim would race it."""

    def __init__(self, payloads: Sequence[str]) -> None:
        super().__init__(payloads)
        self.sweeping = False
        self.sweeps = 0
        self.claims_during_sweep = 0
        self.failed = False

    async def exchange(self, settlements, plan, n, lease_ms, dead_ttl_ms, run_now=0, held=0):
        if n and self.sweeping:
            self.claims_during_sweep += 1
        if n and not self.failed:
            self.failed = True
            raise ConnectionError("reply lost")
        return await super().exchange(settlements, plan, n, lease_ms, dead_ttl_ms, run_now, held)

    async def renew(self, worker_id, info, held, running, lease_ms, ttl_ms, sweep=False):
        if sweep:
            self.sweeping, self.sweeps = True, self.sweeps + 1
            await asyncio.sleep(0.05)  # the heartbeat's round trip, claims free to race it
            self.sweeping = False
        return await super().renew(worker_id, info, held, running, lease_ms, ttl_ms, sweep)


def test_no_claim_is_sent_while_a_heartbeat_sweeps_lost_claims_back():
    """A claim sent during the sweep could be recorded before the sweep runs and be
    swept back to ready while the worker runs it: the same task would run twice."""
    broker = LostClaimReplyBroker([payload("ok")] * 20_000)
    app._broker = broker
    worker = Worker(app, parse_queues("q"), concurrency=2, lease_seconds=0.6)

    async def main() -> None:
        running = asyncio.create_task(worker.main())
        deadline = time.monotonic() + 10
        while not broker.sweeps or broker.sweeping:
            assert time.monotonic() < deadline and not running.done()
            await asyncio.sleep(0.005)
        worker.request_stop("test")
        await asyncio.wait_for(running, 10)

    asyncio.run(main())
    assert broker.sweeps == 1 and broker.claims_during_sweep == 0
