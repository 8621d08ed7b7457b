"""The worker: one asyncio loop that claims in batches, runs tasks, and settles in batches.

    fetch loop --claim(free slots)--> dispatch --async task--> inbox --> N runner coroutines
                                              --sync task----> N task threads (pool.py)
    runners/threads --> settlements --> settle loop: one broker call per batch
    heartbeat --> renews every held lease + publishes the worker's info

Async tasks run inline on the loop. Sync tasks run on `concurrency` plain threads. A task
is "held" from claim until its settlement is written, and the heartbeat renews every held
lease, so a long task is never reclaimed while its worker lives. What to settle is
decided in outcomes.py, how much to claim and what to hand back in decisions.py; this
module holds the state and does the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from .. import logs
from ..brokers.base import Delivery, Exchanging, PushWindow, Settlement
from ..errors import BadPayload, TaskTimeout
from ..lifecycle import Outcome
from ..message import decode_payload
from ..selection import QueueSelection, plan_claim
from . import decisions, outcomes
from .decisions import EXIT_HARD_TIMEOUT, RateDenials, Settings
from .execute import call_async, call_sync
from .metrics import NullMetrics
from .pool import Job, TaskThreads

if TYPE_CHECKING:
    from ..app import App, Task

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
    ) -> None:
        self.settings = s = Settings.of(concurrency, prefetch, lease_seconds, grace_seconds)
        self.app = app
        self.selection = selection
        self.concurrency, self.prefetch, self.capacity = s.concurrency, s.prefetch, s.capacity
        self.lease_ms = s.lease_ms
        self.metrics_port, self.metrics_host = metrics_port, metrics_host
        self.worker_id = worker_id or decisions.default_worker_id()
        self.pod = os.environ.get("POD_NAME")
        self.dead_ttl_ms = int(app.dead_ttl * 1000)

        self.held: dict[str, Delivery] = {}  # claimed and not yet settled in the broker
        self.running: dict[str, Delivery] = {}  # started, by runners and threads
        self.settling: set[str] = set()  # entries with a settlement queued or being written
        self.pending: list[Settlement] = []
        self.exit_code = 0
        self.stopping = False
        self.metrics: Any = NullMetrics()
        self._last_broker_ok = 0.0
        self._claim_inflight = False
        # The broker's optional capabilities, found once at start (brokers.base).
        self._exchanger: Exchanging | None = None
        self._push: PushWindow | None = None
        self._rate = RateDenials()

    # -- lifecycle -----------------------------------------------------------------------
    def run(self) -> int:
        """Run until SIGTERM/SIGINT (exit 0) or a sync hard timeout (exit 3)."""
        code = asyncio.run(self._main())
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

    async def _main(self) -> int:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._settle_wakeup = asyncio.Event()
        self._closing = False
        self.inbox: asyncio.Queue[Job | None] = asyncio.Queue()
        self.threads = TaskThreads(self.concurrency, self.loop, self._run_sync, self._settle)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.request_stop, sig.name)

        server = None
        if self.metrics_port is not None:
            from . import probes
            from .metrics import Metrics

            self.metrics = Metrics()
            self.metrics.watch(lambda: len(self.running), lambda: len(self.held))
            server = await probes.serve(
                self.metrics_host, self.metrics_port, self.metrics.render, self._readiness
            )

        self.broker = broker = self.app.broker
        self._exchanger = broker if isinstance(broker, Exchanging) else None
        self._push = broker if isinstance(broker, PushWindow) else None
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
            concurrency=self.concurrency,
            prefetch=self.prefetch,
            lease_s=self.lease_ms / 1000,
            tasks=len(self.app.tasks),
        )
        loops = [
            asyncio.create_task(self._fetch_loop()),
            asyncio.create_task(self._settle_loop()),
            asyncio.create_task(self._heartbeat_loop()),
        ]
        if any(t.timeout for t in self.app.tasks.values() if not t.is_async):
            loops.append(asyncio.create_task(self._watchdog_loop()))
        runners = [asyncio.create_task(self._runner()) for _ in range(self.concurrency)]

        await self._stop.wait()
        grace = 0.0 if self.exit_code == EXIT_HARD_TIMEOUT else self.settings.grace_seconds
        await self._shutdown(loops, runners, grace)
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

    async def _shutdown(
        self, loops: list[asyncio.Task], runners: list[asyncio.Task], grace: float
    ) -> None:
        fetch, settle, heartbeat, *others = loops
        self.stopping = True
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(fetch, 10)
        if self._push is not None:  # stop deliveries, return unclaimed ones
            with contextlib.suppress(Exception):
                await self._push.release()
        # Fetched but never started: back to the head of their lists right away.
        unstarted: list[Delivery] = []
        while not self.inbox.empty():
            job = self.inbox.get_nowait()
            if job is not None:
                unstarted.append(job[0])
        unstarted += self.threads.unstarted()
        self._hand_back(unstarted)
        for _ in runners:
            self.inbox.put_nowait(None)
        self.threads.stop()
        # Running tasks get the grace period to finish.
        deadline = time.monotonic() + grace
        while (self.running or not all(r.done() for r in runners)) and (
            time.monotonic() < deadline
        ):
            await asyncio.sleep(0.02)
        late = [r for r in runners if not r.done()]
        still = decisions.cut_off(self.running, self.settling)
        if still or late:
            logs.warn("grace period over: handing back running tasks", tasks=len(still))
            for r in late:
                r.cancel()
            if late:
                await asyncio.wait(late, timeout=5)
            self.threads.abandoned.update(d.entry for d in still)
            self._hand_back(decisions.cut_off({d.entry: d for d in still}, self.settling))
        self.threads.drain()
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
            if free <= 0 or self._claim_inflight:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            self._claim_inflight = True
            try:
                got = await self.broker.claim(plan_claim(self.selection, free), free, self.lease_ms)
            except Exception as exc:
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

    def _accept(self, got: list[Delivery]) -> None:
        for d in got:
            self.held[d.entry] = d
            self._dispatch(d)

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
        got: list[Delivery] = []
        owns_claim = False
        delay = 0.1
        for attempt in range(1_000_000):
            try:
                if exchanger is None:
                    await self.broker.settle(batch, self.dead_ttl_ms)
                elif n:
                    self._claim_inflight = owns_claim = True
                    plan = plan_claim(self.selection, n)
                    got = await exchanger.exchange(batch, plan, n, self.lease_ms, self.dead_ttl_ms)
                else:
                    await exchanger.exchange(batch, [], 0, self.lease_ms, self.dead_ttl_ms)
                self._last_broker_ok = time.monotonic()
                break
            except Exception as exc:
                n = 0  # a lost reply's claims come back when their leases expire
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

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                await self.broker.heartbeat(
                    self.worker_id,
                    self.info(),
                    list(self.held.values()),
                    self.lease_ms,
                    self.settings.worker_ttl_ms,
                )
                self._last_broker_ok = time.monotonic()
            except Exception as exc:
                logs.warn("heartbeat failed", error=str(exc))
            await asyncio.sleep(self.settings.heartbeat_s)

    async def _watchdog_loop(self) -> None:
        """Sync tasks cannot be interrupted: detect the overrun and exit (see _hard_timeout)."""
        while True:
            await asyncio.sleep(0.05)
            for job, seconds in self.threads.overruns(time.monotonic()):
                self.threads.abandoned.add(job[0].entry)
                self._hard_timeout(job, seconds)

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
        return decisions.readiness(self.stopping, since, self.settings.heartbeat_s)

    # -- dispatch ------------------------------------------------------------------------
    def _settle(self, s: Settlement) -> None:
        self.pending.append(s)
        self.settling.add(s.delivery.entry)
        self._settle_wakeup.set()

    def _dispatch(self, d: Delivery) -> None:
        """Decode a claimed message and route it; bad input goes to the DLQ with the reason."""
        try:
            body = decode_payload(d.payload)
        except BadPayload as exc:
            self._settle(outcomes.undecodable(d, str(exc), time.time()))
            self.metrics.finished("<undecodable>", Outcome.DEAD.value, None)
            logs.warn("undecodable payload moved to the DLQ", queue=d.queue, reason=str(exc))
            return
        name = body["task"]
        task = self.app.tasks.get(name)
        if task is None:
            self._settle(outcomes.unknown_task(d, body, time.time()))
            self.metrics.finished(name, Outcome.DEAD.value, None)
            logs.warn("unknown task moved to the DLQ", queue=d.queue, task=name)
            return
        if task.is_async or task.rate is not None:
            self.inbox.put_nowait((d, body, task))
        else:
            self.threads.submit((d, body, task))

    def _started(self, d: Delivery) -> None:
        self.running[d.entry] = d
        if self.metrics.__class__ is not NullMetrics:
            lag = decisions.enqueue_lag_s(d.ready_ms, time.time())
            if lag is not None:
                self.metrics.started(d.queue, lag)

    # -- async tasks (and rate-limited ones) ---------------------------------------------
    async def _runner(self) -> None:
        while True:
            job = await self.inbox.get()
            if job is None:
                return
            d, body, task = job
            try:
                if task.rate is not None and not await self._take_token(d, task):
                    continue
                if not task.is_async:
                    self.threads.submit(job)
                    continue
                self._started(d)
                await self._run_async(d, body, task)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not kill the runner: lease expiry recovers
                logs.error("runner error", entry=d.entry, exc_info=True)
            finally:
                self.running.pop(d.entry, None)

    async def _take_token(self, d: Delivery, task: Task) -> bool:
        assert task.rate is not None
        limit, window_ms = task.rate
        granted, wait_ms = await self.broker.acquire_rate(task.name, limit, window_ms)
        if granted:
            self._rate.granted(task.name)
            return True
        self._settle(outcomes.postpone(d, self._rate.denied(task.name, wait_ms, window_ms)))
        return False

    async def _run_async(self, d: Delivery, body: dict, task: Task) -> None:
        started = time.perf_counter()
        try:
            await call_async(task, body)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: B036 - SystemExit in a task must not stop us
            self._settle(self._failure(d, body, task, exc, time.perf_counter() - started))
            return
        self._settle(self._success(d, body, task, time.perf_counter() - started))

    # -- sync tasks (on the pool's threads) ----------------------------------------------
    def _run_sync(self, job: Job) -> Settlement:
        d, body, task = job
        self._started(d)
        started = time.perf_counter()
        try:
            call_sync(task, body)
        except BaseException as exc:  # noqa: B036 - SystemExit in a task must not stop us
            return self._failure(d, body, task, exc, time.perf_counter() - started)
        else:
            return self._success(d, body, task, time.perf_counter() - started)
        finally:
            self.running.pop(d.entry, None)

    def _hard_timeout(self, job: Job, seconds: float) -> None:
        """A thread cannot be killed: record the failure, hand back the rest, and exit
        non-zero so the pod restarts with a fresh process."""
        d, body, task = job
        exc = TaskTimeout(f"sync task overran its hard timeout of {task.timeout}s")
        self._settle(self._failure(d, body, task, exc, seconds))
        logs.error(
            "hard timeout: handing back other work and exiting",
            task=task.name,
            id=body.get("id"),
            exit_code=EXIT_HARD_TIMEOUT,
        )
        self.exit_code = EXIT_HARD_TIMEOUT
        self.request_stop("hard-timeout")

    # -- outcomes (called from the loop and from task threads) ---------------------------
    def _success(self, d: Delivery, body: dict, task: Task, seconds: float) -> Settlement:
        self.metrics.finished(task.name, "success", seconds)
        return outcomes.success(d, body, seconds)

    def _failure(
        self, d: Delivery, body: dict, task: Task, exc: BaseException, seconds: float
    ) -> Settlement:
        failed = outcomes.failure(
            d,
            body,
            task.max_retries,
            exc,
            seconds,
            backoff_base=self.app.retry_backoff,
            now=time.time(),
        )
        self.metrics.finished(task.name, failed.outcome.value, seconds)
        if failed.retry_in is not None:
            logs.log(
                "task failed, will retry",
                task=task.name,
                id=body.get("id"),
                attempt=failed.attempts,
                retry_in=round(failed.retry_in, 3),
                error=failed.error,
            )
        else:
            logs.warn(
                "task failed for good, moved to the DLQ",
                task=task.name,
                id=body.get("id"),
                attempts=failed.attempts,
                error=failed.error,
            )
        return failed.settlement
