"""The worker: one asyncio loop that claims in batches, runs tasks, and settles in batches.

    fetch loop --claim(free slots)--> dispatch --async task--> inbox --> N runner coroutines
                                              --sync task----> N task threads
    runners/threads --> settlements --> settle loop: one script call per batch
    heartbeat --> renews every held lease + publishes the worker's info

Async tasks run inline on the loop. Sync tasks run on `concurrency` plain threads fed by a
SimpleQueue, which report back in batches, so the loop is woken once per batch rather than
once per task. A task is "held" from claim until its settlement is written, and the
heartbeat renews every held lease, so a long task is never reclaimed while its worker lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

from . import logs
from .broker import Delivery, Settlement
from .errors import BadPayload
from .lifecycle import (
    Outcome,
    QueueSelection,
    after_failure,
    backoff_seconds,
    plan_claim,
    rate_wait_ms,
)
from .message import decode_payload, reencode

if TYPE_CHECKING:
    from .app import App, Task

EXIT_HARD_TIMEOUT = 3  # a sync task overran its hard timeout: the pod must restart
MIN_IDLE_S, MAX_IDLE_S = 0.005, 0.25  # poll back-off when every queue is empty
DRAIN_S = 0.002  # while task threads keep finishing, their results are settled this often
ACK, RETRY, DEAD, REQUEUE, POSTPONE = (o.value for o in Outcome)

Job = tuple[Delivery, dict, "Task"]


class NullMetrics:
    def finished(self, task: str, outcome: str, seconds: float | None) -> None: ...
    def started(self, queue: str, lag_seconds: float) -> None: ...


class TaskTimeout(Exception):
    """A task ran past its `timeout`."""


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
        if concurrency < 1:
            raise ValueError(f"--concurrency must be >= 1, got {concurrency}")
        if lease_seconds < 0.5:
            raise ValueError(f"--lease-seconds must be >= 0.5, got {lease_seconds}")
        self.app = app
        self.selection = selection
        self.concurrency = concurrency
        self.prefetch = concurrency if prefetch is None else prefetch
        self.prefetch_explicit = prefetch is not None
        if self.prefetch < 0:
            raise ValueError(f"--prefetch must be >= 0, got {prefetch}")
        self.capacity = concurrency + self.prefetch
        self.lease_ms = int(lease_seconds * 1000)
        self.heartbeat_s = min(lease_seconds / 3, 5.0)
        self.worker_ttl_ms = max(self.lease_ms, int(self.heartbeat_s * 3000))
        self.grace_seconds = grace_seconds
        self.metrics_port, self.metrics_host = metrics_port, metrics_host
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
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
        self._window: Any = None  # a push broker's current prefetch window (callable)
        # Sync tasks: threads, their queue, their results and their start times.
        self._threads: list[threading.Thread] = []
        self._thread_jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread_done: deque[Settlement] = deque()
        self._drain_scheduled = False
        self._drain_timer: asyncio.TimerHandle | None = None
        self._sync_started: dict[str, tuple[float, Job]] = {}
        self._abandoned: set[str] = set()
        self._rate_denials: dict[str, int] = {}  # denials in a row since a token, by task

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

        self.broker = self.app.broker
        if not await self._connect():
            if server:
                server.close()
            return self.exit_code
        configure = getattr(self.broker, "configure_window", None)
        if configure is not None:  # push brokers (RabbitMQ): see rabbitmq_window
            configure(self.concurrency, self.prefetch, adaptive=not self.prefetch_explicit)
        # A push broker's prefetch window is what this worker holds anyway (claimed or
        # still in the broker client's buffer), so the worker may claim all of it.
        self._window = getattr(self.broker, "window", None)
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
        grace = 0.0 if self.exit_code == EXIT_HARD_TIMEOUT else self.grace_seconds
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

    async def _shutdown(self, loops: list[asyncio.Task], runners: list[asyncio.Task], grace):
        fetch, settle, heartbeat, *others = loops
        self.stopping = True
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(fetch, 10)
        release = getattr(self.broker, "release", None)
        if release is not None:  # push brokers: stop deliveries, return unclaimed ones
            with contextlib.suppress(Exception):
                await release()
        # Fetched but never started: back to the head of their lists right away.
        unstarted: list[Delivery] = []
        while not self.inbox.empty():
            job = self.inbox.get_nowait()
            if job is not None:
                unstarted.append(job[0])
        with contextlib.suppress(queue.Empty):
            while True:
                job = self._thread_jobs.get_nowait()
                if job is not None:
                    unstarted.append(job[0])
        self._hand_back(unstarted)
        for _ in runners:
            self.inbox.put_nowait(None)
        for _ in self._threads:
            self._thread_jobs.put(None)
        # Running tasks get the grace period to finish.
        deadline = time.monotonic() + grace
        while (self.running or not all(r.done() for r in runners)) and (
            time.monotonic() < deadline
        ):
            await asyncio.sleep(0.02)
        late = [r for r in runners if not r.done()]
        still = [d for d in self.running.values() if d.entry not in self.settling]
        if still or late:
            logs.warn("grace period over: handing back running tasks", tasks=len(still))
            for r in late:
                r.cancel()
            if late:
                await asyncio.wait(late, timeout=5)
            self._abandoned.update(d.entry for d in still)
            self._hand_back([d for d in still if d.entry not in self.settling])
        self._drain_threads()
        # Anything else still held and unsettled (should be nothing) goes back too.
        self._hand_back(
            [d for e, d in self.held.items() if e not in self.settling and e not in self.running]
        )
        self._closing = True
        self._settle_wakeup.set()
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(settle, 15)
        for task in [heartbeat, *others]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self.broker.heartbeat(self.worker_id, "", [], self.lease_ms, self.worker_ttl_ms)
        if self.held:
            logs.warn("leases left to expire", tasks=len(self.held))

    def _hand_back(self, deliveries: list[Delivery]) -> None:
        # LPUSH in reverse keeps their original order at the head of the list.
        for d in reversed(deliveries):
            self._settle(Settlement(REQUEUE, d))

    # -- loops ---------------------------------------------------------------------------
    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _fetch_loop(self) -> None:
        """Claims when slots are free and no settle brought work back (see _write)."""
        idle, failing = MIN_IDLE_S, 0.2
        while not self._stop.is_set():
            capacity = self.capacity
            if self._window is not None:
                capacity = max(capacity, self._window())
            free = capacity - self._unfinished()
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
        """Write a batch of settlements; on Redis, claim the slots they free in the same
        round trip, which halves the calls per task in steady state."""
        exchange = getattr(self.broker, "exchange", None)
        n = 0
        if exchange is not None and not self._stop.is_set() and not self._claim_inflight:
            n = max(0, self.capacity - self._unfinished())
        got: list[Delivery] = []
        owns_claim = False
        delay = 0.1
        for attempt in range(1_000_000):
            try:
                if exchange is None:
                    await self.broker.settle(batch, self.dead_ttl_ms)
                elif n:
                    self._claim_inflight = owns_claim = True
                    plan = plan_claim(self.selection, n)
                    got = await exchange(batch, plan, n, self.lease_ms, self.dead_ttl_ms)
                else:
                    await exchange(batch, [], 0, self.lease_ms, self.dead_ttl_ms)
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
                    self._info(),
                    list(self.held.values()),
                    self.lease_ms,
                    self.worker_ttl_ms,
                )
                self._last_broker_ok = time.monotonic()
            except Exception as exc:
                logs.warn("heartbeat failed", error=str(exc))
            await asyncio.sleep(self.heartbeat_s)

    async def _watchdog_loop(self) -> None:
        """Sync tasks cannot be interrupted: detect the overrun and exit (see _hard_timeout)."""
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            for entry, (started, job) in list(self._sync_started.items()):
                timeout = job[2].timeout
                if timeout and now - started > timeout and entry not in self._abandoned:
                    self._abandoned.add(entry)
                    self._hard_timeout(job, now - started)

    def _unfinished(self) -> int:
        """Held tasks not yet done. A finished task waiting for its settlement to be
        written is no longer work this worker hoards, so it does not use up capacity."""
        return len(self.held) - len(self.settling)

    def _info(self) -> str:
        return json.dumps(
            {
                "worker_id": self.worker_id,
                "pod": self.pod,
                "running": len(self.running),
                "held": len(self.held),
                "concurrency": self.concurrency,
                "queues": list(self.selection.names),
                "at": time.time(),
            }
        )

    def _readiness(self) -> tuple[bool, str]:
        if self.stopping:
            return False, "stopping"
        age = time.monotonic() - self._last_broker_ok
        if age > max(10.0, 3 * self.heartbeat_s):
            return False, f"no successful broker call for {age:.0f}s"
        return True, "ready"

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
            raw = d.payload
            if isinstance(raw, bytes):
                raw = raw.decode("utf-8", errors="replace")
            dead = reencode({"error": str(exc), "raw": raw, "died_at": time.time()})
            self._settle(Settlement(DEAD, d, dead))
            self.metrics.finished("<undecodable>", "dead", None)
            logs.warn("undecodable payload moved to the DLQ", queue=d.queue, reason=str(exc))
            return
        name = body["task"]
        task = self.app.tasks.get(name)
        if task is None:
            body["error"] = f"unknown task name {name!r}: not registered in this worker's app"
            body["died_at"] = time.time()
            self._settle(Settlement(DEAD, d, reencode(body), unique_key=_key(body)))
            self.metrics.finished(name, "dead", None)
            logs.warn("unknown task moved to the DLQ", queue=d.queue, task=name)
            return
        if task.is_async or task.rate is not None:
            self.inbox.put_nowait((d, body, task))
        else:
            self._to_thread((d, body, task))

    def _started(self, d: Delivery) -> None:
        self.running[d.entry] = d
        if self.metrics.__class__ is not NullMetrics:
            ready_ms = d.entry.split("|", 1)[0]
            if ready_ms.isdigit():
                self.metrics.started(d.queue, time.time() - int(ready_ms) / 1000)

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
                    self._to_thread(job)
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
        granted, wait_ms = await self.broker.acquire_rate(task.name, *task.rate)
        if granted:
            self._rate_denials.pop(task.name, None)
            return True
        denials = self._rate_denials.get(task.name, 0)
        self._rate_denials[task.name] = denials + 1
        delay = rate_wait_ms(wait_ms, task.rate[1], denials)
        self._settle(Settlement(POSTPONE, d, delay_ms=delay))
        return False

    async def _run_async(self, d: Delivery, body: dict, task: Task) -> None:
        args, kwargs = body.get("args", ()), body.get("kwargs", {})
        started = time.perf_counter()
        try:
            if task.timeout is None:
                await task.fn(*args, **kwargs)
            else:
                try:
                    async with asyncio.timeout(task.timeout) as scope:
                        await task.fn(*args, **kwargs)
                except TimeoutError:
                    if scope.expired():
                        raise TaskTimeout(
                            f"async task cancelled after its timeout of {task.timeout}s"
                        ) from None
                    raise
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: B036 - SystemExit in a task must not stop us
            self._settle(self._failure(d, body, task, exc, time.perf_counter() - started))
            return
        self._settle(self._success(d, body, task, time.perf_counter() - started))

    # -- sync tasks ----------------------------------------------------------------------
    def _to_thread(self, job: Job) -> None:
        if not self._threads:
            for i in range(self.concurrency):
                t = threading.Thread(
                    target=self._thread_main, name=f"ebbtide-task-{i}", daemon=True
                )
                t.start()
                self._threads.append(t)
        self._thread_jobs.put(job)

    def _thread_main(self) -> None:
        get, done = self._thread_jobs.get, self._thread_done
        while True:
            job = get()
            if job is None:
                return
            d, body, task = job
            self._started(d)
            started = time.perf_counter()
            if task.timeout:
                self._sync_started[d.entry] = (time.monotonic(), job)
            try:
                task.fn(*body.get("args", ()), **body.get("kwargs", {}))
            except BaseException as exc:  # noqa: B036 - SystemExit in a task must not stop us
                result = self._failure(d, body, task, exc, time.perf_counter() - started)
            else:
                result = self._success(d, body, task, time.perf_counter() - started)
            finally:
                self.running.pop(d.entry, None)
                self._sync_started.pop(d.entry, None)
            if d.entry in self._abandoned:
                continue  # already settled or handed back by the loop
            done.append(result)
            if not self._drain_scheduled:
                self._drain_scheduled = True
                try:
                    self.loop.call_soon_threadsafe(self._drain_threads)
                except RuntimeError:
                    return  # the loop is gone: we are exiting, the lease covers this task

    def _drain_threads(self) -> None:
        """Settle what the task threads finished. While results keep coming, drain again
        every DRAIN_S on a timer and keep `_drain_scheduled` set, so busy threads do not
        wake the loop once per task; the first result after a quiet DRAIN_S wakes it at
        once."""
        timer, self._drain_timer = self._drain_timer, None
        if timer is not None:
            timer.cancel()  # called directly (shutdown) while a timer was armed
        done = self._thread_done
        if done:
            while done:
                self._settle(done.popleft())
            self._drain_timer = self.loop.call_later(DRAIN_S, self._drain_threads)
            return
        self._drain_scheduled = False
        if done:  # appended after the check above, by a thread that saw the flag still set
            self._drain_scheduled = True
            self._drain_timer = self.loop.call_later(DRAIN_S, self._drain_threads)

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
        return Settlement(ACK, d, busy_us=int(seconds * 1e6), unique_key=_key(body))

    def _failure(
        self, d: Delivery, body: dict, task: Task, exc: BaseException, seconds: float
    ) -> Settlement:
        attempt = int(body.get("attempt", 0))
        outcome = after_failure(attempt, task.max_retries)
        body = {**body, "attempt": attempt + 1, "error": f"{type(exc).__name__}: {exc}"}
        busy = int(seconds * 1e6)
        self.metrics.finished(task.name, outcome.value, seconds)
        if outcome is Outcome.RETRY:
            delay = backoff_seconds(attempt, base=self.app.retry_backoff)
            logs.log(
                "task failed, will retry",
                task=task.name,
                id=body.get("id"),
                attempt=attempt + 1,
                retry_in=round(delay, 3),
                error=body["error"],
            )
            return Settlement(RETRY, d, reencode(body), int(delay * 1000), busy)
        body["traceback"] = "".join(traceback.format_exception(exc))
        body["died_at"] = time.time()
        logs.warn(
            "task failed for good, moved to the DLQ",
            task=task.name,
            id=body.get("id"),
            attempts=attempt + 1,
            error=body["error"],
        )
        return Settlement(DEAD, d, reencode(body), 0, busy, _key(body))


def _key(body: dict) -> str:
    key = body.get("key")
    return key if isinstance(key, str) else ""
