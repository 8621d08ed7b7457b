"""The worker: one asyncio loop that claims in batches, runs tasks, and settles in batches.

    fetch loop --claim(free slots)--> executor --async task--> inbox --> N runner coroutines
                                              --sync task----> N task threads (pool.py)
    runners/threads --> settlements --> settle loop: one broker call per batch
    heartbeat --> renews every held lease + publishes the worker's info

Async tasks run inline on the loop. Sync tasks run on `concurrency` plain threads. A task
is "held" from claim until its settlement is written, and the heartbeat renews every held
lease, so a long task is never reclaimed while its worker lives. Running tasks is the
executor's job (executor.py); what to settle is decided in outcomes.py, how much to claim
and what to hand back in decisions.py. This module holds the leases and does the broker
I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from typing import TYPE_CHECKING

from .. import logs
from ..brokers.base import Delivery, Exchanging, PushWindow, Settlement
from ..brokers.rabbitmq.window import HOLD_S, Window  # pure: no pika behind it
from ..selection import QueueSelection, plan_claim
from ..shards import format_counts as shards_text
from . import decisions, outcomes
from .decisions import EXIT_HARD_TIMEOUT, Settings
from .executor import Executor
from .report import Report

if TYPE_CHECKING:
    from ..app import App

MIN_IDLE_S, MAX_IDLE_S = 0.005, 0.25  # poll back-off when every queue is empty


class Worker:
    def __init__(
        self,
        app: App,
        selection: QueueSelection,
        *,
        concurrency: int = 8,
        prefetch: int | None = None,
        lease_seconds: float = 30.0,
        grace_seconds: float = 30.0,
        metrics_port: int | None = None,
        metrics_host: str = "0.0.0.0",
        worker_id: str | None = None,
        child_socket: str | None = None,
        child_metrics: bool = False,
        thread_limit: int | str | None = None,
    ) -> None:
        self.settings = s = Settings.of(
            concurrency, prefetch, lease_seconds, grace_seconds, thread_limit
        )
        self.app = app
        # Every shard of a sharded queue, and those a shrink left to drain (shards.py).
        self.selection = selection.with_shards(
            {q: max(selection.shards.get(q, 1), app.drained_shards(q)) for q in selection.names}
        )
        self._claims = 0  # rotates the first shard of each claim plan
        self.concurrency, self.prefetch, self.capacity = s.concurrency, s.prefetch, s.capacity
        self.lease_ms = s.lease_ms
        self.metrics_port, self.metrics_host = metrics_port, metrics_host
        self.child_socket = child_socket  # a child of --processes N: probes for the supervisor
        # ...and its task metrics, into the files the supervisor sums, when it serves them:
        # otherwise each task would pay ~9 us of file writes for nobody.
        self.child_metrics = child_metrics
        self.worker_id = worker_id or decisions.default_worker_id()
        self.pod = os.environ.get("POD_NAME")
        self.dead_ttl_ms = int(app.dead_ttl * 1000)

        self.held: dict[str, Delivery] = {}  # claimed and not yet settled in the broker
        self.settling: set[str] = set()  # entries with a settlement queued or being written
        self.pending: list[Settlement] = []
        self.exit_code = 0
        self.stopping = False
        self.report = Report()
        self._last_broker_ok = 0.0
        self._claim_inflight = False
        self._sweep = False  # a claim reply was lost: the next heartbeat sweeps
        self._loops: dict[str, asyncio.Task] = {}  # fetch, settle, heartbeat: /readyz watches
        # The broker's optional capabilities, found once at start (brokers.base).
        self._exchanger: Exchanging | None = None
        self._push: PushWindow | None = None
        self.executor: Executor | None = None
        # Redis without --prefetch: the held bound grows with rate x round trip.
        self._window: Window | None = None
        self._exchange_rtt_s = 0.0

    @property
    def running(self) -> dict[str, Delivery]:
        """Started and not finished, by runners and threads."""
        return self.executor.running if self.executor is not None else {}

    # -- lifecycle -----------------------------------------------------------------------
    def run(self) -> int:
        """Run until SIGTERM/SIGINT (exit 0) or a sync hard timeout (exit 3)."""
        code = asyncio.run(self.main())
        if self.running:
            # Threads stuck in user code cannot be stopped; their work was handed back.
            logs.warn("exiting with task threads still running", threads=len(self.running))
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(code)
        return code

    def request_stop(self, reason: str = "signal") -> None:
        if not self._stop.is_set():
            logs.log("stopping", reason=reason, held=len(self.held), running=len(self.running))
            self._stop.set()
            self._slot_freed.set()

    async def main(self) -> int:
        """The worker on the running loop, until `request_stop` (or a signal); returns
        the exit code. `run()` is this plus the exit of stuck task threads."""
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._settle_wakeup = asyncio.Event()
        self._closing = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.request_stop, sig.name)

        server = None
        if self.metrics_port is not None:
            server = await self.report.serve(
                self.metrics_host,
                self.metrics_port,
                lambda: len(self.running),
                lambda: len(self.held),
                self._thread_limit,
                self._readiness,
            )
        elif self.child_socket is not None:
            server = await self.report.serve_child(
                self.child_socket, self._readiness, record=self.child_metrics
            )

        self.broker = broker = self.app.broker
        self.executor = executor = Executor(
            self.app,
            broker,
            self.concurrency,
            self._settle,
            self.report,
            self._hard_timeout,
            self.settings.thread_limit,
        )
        self._exchanger = broker if isinstance(broker, Exchanging) else None
        self._push = broker if isinstance(broker, PushWindow) else None
        if self._exchanger is not None:
            self._exchanger.bind_worker(self.worker_id, self.settings.alive_ms)
            adaptive = not self.settings.prefetch_explicit
            self._window = Window(self.capacity, self.concurrency, adaptive=adaptive)
        if not await self._connect():
            if server:
                server.close()
            return self.exit_code
        if self._push is not None:
            adaptive = not self.settings.prefetch_explicit
            self._push.configure_window(self.concurrency, self.prefetch, adaptive=adaptive)
        logs.log(
            "worker started",
            worker=self.worker_id,
            queues=",".join(f"{q}:{w}" for q, w in self.selection.queues),
            strict=self.selection.strict,
            **({"shards": shards_text(self.selection.shards)} if self.selection.shards else {}),
            concurrency=self.concurrency,
            prefetch=self.prefetch,
            lease_s=self.lease_ms / 1000,
            tasks=len(self.app.tasks),
        )
        self._loops = {
            "fetch": asyncio.create_task(self._fetch_loop()),
            "settle": asyncio.create_task(self._settle_loop()),
            "heartbeat": asyncio.create_task(self._heartbeat_loop()),
        }
        loops = [*self._loops.values(), *executor.start()]
        if self.child_socket is not None and self.child_metrics:
            loops.append(asyncio.create_task(self._gauge_loop()))

        await self._stop.wait()
        grace = 0.0 if self.exit_code == EXIT_HARD_TIMEOUT else self.settings.grace_seconds
        await self._shutdown(executor, loops, grace)
        if server:
            server.close()
        await self.broker.aclose()
        logs.log("worker stopped", worker=self.worker_id, exit_code=self.exit_code)
        return self.exit_code

    async def _connect(self) -> bool:
        delay = 0.2
        while not self._stop.is_set():
            try:
                await self.broker.aconnect()
                self._last_broker_ok = time.monotonic()
                return True
            except Exception as exc:  # unreachable broker: keep trying, never crash
                logs.warn("broker unreachable", error=str(exc), retry_in=round(delay, 2))
                with contextlib.suppress(Exception):
                    await self.broker.aclose()
                await self._sleep(delay)
                delay = min(delay * 2, 5.0)
        return False

    async def _shutdown(self, executor: Executor, loops: list[asyncio.Task], grace: float) -> None:
        fetch, settle, heartbeat, *others = loops
        self.stopping = True
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(fetch, 10)
        if self._push is not None:  # stop deliveries, return unclaimed ones
            with contextlib.suppress(Exception):
                await self._push.release()
        # Fetched but never started: back to the head of their lists right away.
        self._hand_back(executor.unstarted())
        executor.stop()
        # Running tasks get the grace period to finish.
        deadline = time.monotonic() + grace
        while executor.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        late = executor.late_runners()
        still = decisions.cut_off(executor.running, self.settling)
        if still or late:
            logs.warn("grace period over: handing back running tasks", tasks=len(still))
            await executor.cancel(late)
            executor.abandon(still)
            self._hand_back(decisions.cut_off({d.entry: d for d in still}, self.settling))
        executor.threads.drain()
        self._hand_back(decisions.leftovers(self.held, self.settling, self.running))
        self._closing = True
        self._settle_wakeup.set()
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(settle, 15)
        for task in [heartbeat, *others]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self.broker.heartbeat(
                self.worker_id, "", [], self.lease_ms, self.settings.worker_ttl_ms
            )
        if self.held:
            logs.warn("leases left to expire", tasks=len(self.held))

    def _hand_back(self, deliveries: list[Delivery]) -> None:
        for s in outcomes.hand_back(deliveries):
            self._settle(s)

    # -- loops ---------------------------------------------------------------------------
    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _fetch_loop(self) -> None:
        """Claims when slots are free and no settle brought work back (see _write)."""
        idle, failing = MIN_IDLE_S, 0.2
        push = self._push
        while not self._stop.is_set():
            window = push.window() if push is not None else None
            free = decisions.free_slots(self.capacity, window, len(self.held), len(self.settling))
            if decisions.holds_lost(self.held.values()):
                free = 0  # a task a worker was lost with runs alone (see holds_lost)
            if free <= 0 or self._claim_inflight:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            self._claim_inflight = True
            try:
                got = await self._claim(free)
            except Exception as exc:
                self._sweep = True  # its claims may be recorded: the heartbeat puts them back
                logs.warn("claim failed", error=str(exc), retry_in=round(failing, 2))
                await self._sleep(failing)
                failing = min(failing * 2, 5.0)
                continue
            finally:
                self._claim_inflight = False
            self._last_broker_ok = time.monotonic()
            failing = 0.2
            if got:
                idle = MIN_IDLE_S
                self._accept(got)
            else:
                await self._sleep(idle)
                idle = min(idle * 2, MAX_IDLE_S)

    async def _claim(self, n: int) -> list[Delivery]:
        plan = self._plan(n)
        if self._exchanger is None:
            return await self.broker.claim(plan, n, self.lease_ms)
        now = decisions.run_now(self.concurrency, len(self.held), len(self.settling), n)
        started = time.perf_counter()
        _, got = await self._exchanger.exchange(
            [], plan, n, self.lease_ms, self.dead_ttl_ms, now, held=len(self.held)
        )
        self._exchanged(time.perf_counter() - started, 0)
        return got

    def _plan(self, n: int) -> list[tuple[str, int]]:
        self._claims += 1
        return plan_claim(self.selection, n, turn=self._claims)

    def _exchanged(self, seconds: float, settled: int) -> None:
        """One exchange's round trip and settlements: resize the held bound (Redis, no
        --prefetch) to cover a few round trips of work at the measured rate."""
        window = self._window
        if window is None or not window.adaptive:
            return
        rtt = self._exchange_rtt_s
        self._exchange_rtt_s = seconds if rtt == 0 else 0.8 * rtt + 0.2 * seconds
        window.completed(settled)
        window.hold_s = decisions.prefetch_hold_s(self._exchange_rtt_s, HOLD_S)
        resized = window.tick(time.monotonic())
        if resized is not None:
            window.current = self.capacity = resized
            self._slot_freed.set()

    def _accept(self, got: list[Delivery]) -> None:
        """Hold and dispatch what was claimed (dispatch never raises: bad input is buried)."""
        assert self.executor is not None
        for d in got:
            self.held[d.entry] = d
            self.executor.dispatch(d)

    async def _settle_loop(self) -> None:
        while True:
            await self._settle_wakeup.wait()
            self._settle_wakeup.clear()
            if self.pending:
                batch, self.pending = self.pending, []
                await self._write(batch)
            elif self._closing:
                return

    async def _write(self, batch: list[Settlement]) -> None:
        """Write a batch of settlements; on an Exchanging broker (Redis), claim the slots
        they free in the same round trip, which halves the calls per task."""
        exchanger = self._exchanger
        n = 0
        if exchanger is not None:
            n = decisions.exchange_quota(
                self.capacity,
                len(self.held),
                len(self.settling),
                self._stop.is_set(),
                self._claim_inflight,
            )
            if decisions.holds_lost(self.held.values(), (s.delivery.entry for s in batch)):
                n = 0  # a task a worker was lost with runs alone (see holds_lost)
        got: list[Delivery] = []
        owns_claim = False
        delay = 0.1
        for attempt in range(1_000_000):
            try:
                if exchanger is None:
                    await self.broker.settle(batch, self.dead_ttl_ms)
                    settled = len(batch)
                elif n:
                    self._claim_inflight = owns_claim = True
                    plan = self._plan(n)
                    now = decisions.run_now(self.concurrency, len(self.held), len(self.settling), n)
                    started = time.perf_counter()
                    still = len(self.held) - len({s.delivery.entry for s in batch})
                    settled, got = await exchanger.exchange(
                        batch, plan, n, self.lease_ms, self.dead_ttl_ms, now, held=max(0, still)
                    )
                    self._exchanged(time.perf_counter() - started, len(batch))
                else:
                    started = time.perf_counter()
                    settled, _ = await exchanger.exchange(
                        batch, [], 0, self.lease_ms, self.dead_ttl_ms
                    )
                    self._exchanged(time.perf_counter() - started, len(batch))
                self._last_broker_ok = time.monotonic()
                if settled < len(batch):
                    self.report.stale(len(batch) - settled, 0)
                break
            except Exception as exc:
                self._sweep = self._sweep or n > 0  # a lost reply's claims: see _heartbeat
                n = 0
                if self._closing and attempt >= 5:
                    logs.error("settle failed; leases will expire instead", error=str(exc))
                    break
                logs.warn("settle failed", error=str(exc), retry_in=round(delay, 2))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                if owns_claim:
                    self._claim_inflight = owns_claim = False
        for s in batch:
            self.held.pop(s.delivery.entry, None)
            self.settling.discard(s.delivery.entry)
        if got:
            self._accept(got)
        self._slot_freed.set()
        self._settle_wakeup.set()  # settlements queued meanwhile go out next

    async def _gauge_loop(self) -> None:
        """A child's in-flight and held gauges, into the shared metrics files."""
        while True:
            self.report.metrics.sample(len(self.running), len(self.held), self._thread_limit())
            await asyncio.sleep(0.5)

    async def _heartbeat_loop(self) -> None:
        last = time.monotonic()
        while True:
            try:
                await self._heartbeat()
                now = self._last_broker_ok = time.monotonic()
                self._late(now - last)
                last = now
            except Exception as exc:
                logs.warn("heartbeat failed", error=str(exc))
            await asyncio.sleep(self.settings.heartbeat_s)

    def _late(self, gap_s: float) -> None:
        """Say so when heartbeats came too far apart: past the liveness window, this
        worker's claims may have gone to another worker while it ran them (a starved
        CPU, a paused process): the way a task runs twice without any crash."""
        alive_s = self.settings.alive_ms / 1000
        if decisions.heartbeat_late(gap_s, alive_s):
            logs.warn(
                "heartbeat late: claims may be taken over",
                gap_s=round(gap_s, 2),
                alive_s=alive_s,
            )

    async def _heartbeat(self) -> None:
        held, ttl = list(self.held.values()), self.settings.worker_ttl_ms
        if self._exchanger is None:
            await self.broker.heartbeat(self.worker_id, self.info(), held, self.lease_ms, ttl)
            return
        running = set(self.running)
        # No claim on its way (single loop: every reply so far is in `held`), so the
        # claims recorded for this worker that it does not hold had their reply lost.
        # The sweep holds the claim flag until its reply is in: a claim sent meanwhile
        # could reach the broker first, be recorded without being in `held`'s snapshot,
        # and be swept back to ready while this worker runs it (run twice).
        sweep = self._sweep and not self._claim_inflight
        if sweep:
            self._claim_inflight = True
        try:
            lost = await self._exchanger.renew(
                self.worker_id, self.info(), held, running, self.lease_ms, ttl, sweep
            )
        finally:
            if sweep:
                self._claim_inflight = False
                self._slot_freed.set()  # the fetch loop waits on it while a claim is out
        if sweep:
            self._sweep = False
        self._fenced_out(lost)

    def _fenced_out(self, lost: list[str]) -> None:
        """Claims the broker gave to another worker (this one was paused or cut off past
        its liveness): stop those tasks where possible and stop holding them."""
        assert self.executor is not None
        gone = 0
        for entry in lost:
            if entry in self.held and entry not in self.settling:
                del self.held[entry]
                self.executor.revoke(entry)
                gone += 1
        if gone:
            self.report.stale(0, gone)
            self._slot_freed.set()

    def _thread_limit(self) -> int:
        executor = self.executor
        return executor.threads.limiter.limit if executor is not None else self.concurrency

    def info(self) -> str:
        """This worker's heartbeat body."""
        return decisions.heartbeat_info(
            self.worker_id,
            self.pod,
            len(self.running),
            len(self.held),
            self.concurrency,
            self.selection.names,
            time.time(),
        )

    def _readiness(self) -> tuple[bool, str]:
        since = time.monotonic() - self._last_broker_ok
        stopped = [name for name, task in self._loops.items() if task.done()]
        return decisions.readiness(self.stopping, since, self.settings.heartbeat_s, stopped)

    def _settle(self, s: Settlement) -> None:
        self.pending.append(s)
        self.settling.add(s.delivery.entry)
        self._settle_wakeup.set()

    def _hard_timeout(self) -> None:
        """The executor recorded a sync task's overrun: hand back the rest and exit 3."""
        self.exit_code = EXIT_HARD_TIMEOUT
        self.request_stop("hard-timeout")
