"""Running claimed tasks: decode and route each delivery, run async (and rate-limited)
tasks on N runner coroutines and sync ones on the thread pool, and hand every outcome
to `settle`. The Worker (loop.py) does the broker side: claims, settlements, leases.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import logs, tracing
from ..brokers.base import Broker, Delivery, Settlement
from ..codec import UnreadableBody, parse_format
from ..errors import BadPayload, InvalidArguments, TaskTimeout
from ..lifecycle import DEFAULT_MAX_RECOVERIES, lost_too_often
from ..message import decode_payload
from ..validation import content_problem, most_bytes, stored_size_problem
from . import outcomes
from .decisions import SUCCESS, RateDenials
from .execute import arguments, call_async, call_sync
from .pool import Job, TaskThreads
from .report import Report

if TYPE_CHECKING:
    from ..app import App, Task


RATE_ERROR_POSTPONE_MS = 1000  # a task whose rate token could not be asked for comes back


class Executor:
    """Tracks what runs (`running`), and what was fetched but not started (its inbox and
    the pool's queue), so the Worker can hand that back when it stops."""

    def __init__(
        self,
        app: App,
        broker: Broker,
        concurrency: int,
        settle: Callable[[Settlement], None],
        report: Report,
        on_hard_timeout: Callable[[], None],
        thread_limit: int | None = None,
    ) -> None:
        self.app, self.broker, self.concurrency = app, broker, concurrency
        self._settle, self.report, self._on_hard_timeout = settle, report, on_hard_timeout
        self.running: dict[str, Delivery] = {}  # started, by runners and threads
        self.inbox: asyncio.Queue[Job | None] = asyncio.Queue()
        self.threads = TaskThreads(
            concurrency, asyncio.get_running_loop(), self._run_sync, settle, thread_limit
        )
        self.runners: list[asyncio.Task] = []
        self._rate = RateDenials()
        self.revoked: set[str] = set()  # entries no longer ours (fenced): never run or settled
        self._runner_of: dict[str, asyncio.Task] = {}  # async entry -> the runner running it
        self.system = tracing.messaging_system(app.broker_url)  # for the tasks' spans

    def start(self) -> list[asyncio.Task]:
        """The runner coroutines, and the hard-timeout watchdog when a sync task has a
        timeout; returns the watchdog task, if any, for the Worker to cancel."""
        self.runners = [asyncio.create_task(self._runner()) for _ in range(self.concurrency)]
        if any(t.timeout for t in self.app.tasks.values() if not t.is_async):
            return [asyncio.create_task(self._watchdog())]
        return []

    def dispatch(self, d: Delivery) -> None:
        """Decode a claimed message and route it; bad input goes to the DLQ with the
        reason. Nothing raises out of here: the fetch loop must go on, whatever the input."""
        try:
            self._route(d)
        except Exception as exc:  # input nobody foresaw, or a bug: bury it, carry on
            logs.error("cannot route a delivery", entry=d.entry, exc_info=True)
            reason = f"cannot be handled: {outcomes.error_text(exc)}"
            self._settle(outcomes.undecodable(d, reason, time.time()))

    def _route(self, d: Delivery) -> None:
        limit = self.app.max_payload_bytes
        if (too_big := stored_size_problem(d.payload, limit)) is not None:
            self._settle(outcomes.undecodable(d, too_big, time.time()))
            self.report.undecodable(d, too_big)
            return
        try:
            body = decode_payload(d.payload, self.app.codec)
        except UnreadableBody as exc:  # a task, but its body is closed to this worker
            self._settle(outcomes.unreadable(d, exc.envelope or {}, str(exc), time.time()))
            self.report.undecodable(d, str(exc))
            return
        except BadPayload as exc:
            self._settle(outcomes.undecodable(d, str(exc), time.time()))
            self.report.undecodable(d, str(exc))
            return
        if most_bytes(d.payload) > limit and (too_big := content_problem(body, limit)):
            self._reject(d, body, too_big)
            return
        name = body["task"]
        task = self.app.tasks.get(name)
        limit = task.max_recoveries if task is not None else DEFAULT_MAX_RECOVERIES
        if lost_too_often(d.recoveries, limit):
            self._settle(outcomes.lost(d, body, time.time()))
            self.report.lost(d, name)
            return
        if task is None:
            grace = self.app.unknown_task_grace_seconds
            settlement = outcomes.unknown_task(d, body, time.time(), grace)
            self._settle(settlement)
            self.report.unknown_task(d, name, settlement.op)
            return
        try:
            call = task.arguments.check(*arguments(body), quote_inputs=not sealed(body))
        except InvalidArguments as exc:
            self._reject(d, body, str(exc))
            return
        if task.is_async or task.rate is not None:
            self.inbox.put_nowait((d, body, task, call))
        else:
            self.threads.submit((d, body, task, call))

    def _reject(self, d: Delivery, body: dict[str, Any], reason: str) -> None:
        """A task that must not run as it is (bad arguments, too big): to the DLQ unrun."""
        self._settle(outcomes.rejected(d, body, reason, time.time()))
        self.report.rejected(d, body, reason)

    # -- stopping ------------------------------------------------------------------------
    def unstarted(self) -> list[Delivery]:
        """Take back everything fetched and not started yet."""
        out: list[Delivery] = []
        while not self.inbox.empty():
            job = self.inbox.get_nowait()
            if job is not None:
                out.append(job[0])
        return out + self.threads.unstarted()

    def stop(self) -> None:
        """Runners and threads exit after their current task."""
        for _ in self.runners:
            self.inbox.put_nowait(None)
        self.threads.stop()

    @property
    def busy(self) -> bool:
        return bool(self.running) or not all(r.done() for r in self.runners)

    def late_runners(self) -> list[asyncio.Task]:
        return [r for r in self.runners if not r.done()]

    @staticmethod
    async def cancel(late: list[asyncio.Task]) -> None:
        """Grace over: cancel the runners still busy (their async tasks with them)."""
        for r in late:
            r.cancel()
        if late:
            await asyncio.wait(late, timeout=5)

    def abandon(self, deliveries: list[Delivery]) -> None:
        """Whatever their threads report later is dropped (they were handed back)."""
        self.threads.abandoned.update(d.entry for d in deliveries)

    def revoke(self, entry: str) -> None:
        """The broker gave this claim to another worker (fenced out): an async task is
        cancelled, a sync one cannot be stopped but its outcome is dropped, and one not
        started yet never starts."""
        self.revoked.add(entry)
        self.threads.abandoned.add(entry)
        runner = self._runner_of.get(entry)
        if runner is not None:
            runner.cancel()

    # -- running -------------------------------------------------------------------------
    def _started(self, d: Delivery) -> None:
        self.running[d.entry] = d
        self.report.started(d)

    async def _runner(self) -> None:
        while True:
            job = await self.inbox.get()
            if job is None:
                return
            d, body, task, call = job
            if d.entry in self.revoked:
                continue
            try:
                if task.rate is not None and not await self._take_token(d, task):
                    continue
                if not task.is_async:
                    self.threads.submit(job)
                    continue
                self._started(d)
                self._runner_of[d.entry] = asyncio.current_task()  # type: ignore[assignment]
                await self._run_async(d, body, task, call)
            except asyncio.CancelledError:
                if d.entry not in self.revoked:
                    raise
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()  # only the revoked task stops, not the runner
                logs.warn("task cancelled: its claim was given to another worker", entry=d.entry)
            except Exception as exc:  # a bug here must not kill the runner, nor strand the task
                logs.error("runner error", entry=d.entry, exc_info=True)
                reason = f"worker error: {outcomes.error_text(exc)}"
                self._settle(outcomes.undecodable(d, reason, time.time()))
            finally:
                self.running.pop(d.entry, None)
                self._runner_of.pop(d.entry, None)
                self.revoked.discard(d.entry)

    async def _take_token(self, d: Delivery, task: Task) -> bool:
        assert task.rate is not None
        limit, window_ms = task.rate
        try:
            granted, wait_ms = await self.broker.acquire_rate(task.name, limit, window_ms)
        except Exception as exc:  # the broker is away: postpone, never strand the task
            logs.warn("rate limit unavailable, postponing", task=task.name, error=str(exc))
            self._settle(outcomes.postpone(d, RATE_ERROR_POSTPONE_MS))
            return False
        if granted:
            self._rate.granted(task.name)
            return True
        self._settle(outcomes.postpone(d, self._rate.denied(task.name, wait_ms, window_ms)))
        return False

    async def _run_async(
        self, d: Delivery, body: dict[str, Any], task: Task, call: tuple[tuple, dict[str, Any]]
    ) -> None:
        with tracing.running(body, d.queue, self.system) as span:
            started = time.perf_counter()
            try:
                await call_async(task, *call)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: B036 - SystemExit in a task must not stop us
                settlement = self._ended(d, body, task, span, started, exc)
            else:
                settlement = self._ended(d, body, task, span, started)
        self._settle(settlement)

    def _run_sync(self, job: Job) -> Settlement:
        """On a pool thread."""
        d, body, task, call = job
        self._started(d)
        try:
            with tracing.running(body, d.queue, self.system) as span:
                started = time.perf_counter()
                try:
                    call_sync(task, *call)
                except BaseException as exc:  # noqa: B036 - SystemExit in a task must not stop us
                    settlement = self._ended(d, body, task, span, started, exc)
                else:
                    settlement = self._ended(d, body, task, span, started)
            return settlement
        finally:
            self.running.pop(d.entry, None)

    async def _watchdog(self) -> None:
        """Sync tasks cannot be interrupted: detect the overrun (see _hard_timeout)."""
        while True:
            await asyncio.sleep(0.05)
            for job, seconds in self.threads.overruns(time.monotonic()):
                self.threads.abandoned.add(job[0].entry)
                self._hard_timeout(job, seconds)

    def _hard_timeout(self, job: Job, seconds: float) -> None:
        """A thread cannot be killed: record the failure; the Worker hands back the rest
        and exits non-zero, so the pod restarts with a fresh process."""
        d, body, task, _ = job
        exc = TaskTimeout(f"sync task overran its hard timeout of {task.timeout}s")
        self._settle(self._failure(d, body, task, exc, seconds))
        self.report.hard_timeout(task, body)
        self._on_hard_timeout()

    # -- outcomes (from the loop and from task threads) ----------------------------------
    def _ended(
        self,
        d: Delivery,
        body: dict[str, Any],
        task: Task,
        span: tracing.NullSpan | tracing.TaskSpan,
        started: float,
        exc: BaseException | None = None,
    ) -> Settlement:
        """A run returned (exc None) or raised: its settlement, its span's outcome."""
        seconds = time.perf_counter() - started
        if exc is None:
            span.finish(SUCCESS)
            return self._success(d, body, task, seconds)
        settlement = self._failure(d, body, task, exc, seconds)
        span.finish(settlement.op.value, exc)
        return settlement

    def _success(self, d: Delivery, body: dict[str, Any], task: Task, seconds: float) -> Settlement:
        self.report.succeeded(task, seconds)
        return outcomes.success(d, body, seconds)

    def _failure(
        self, d: Delivery, body: dict[str, Any], task: Task, exc: BaseException, seconds: float
    ) -> Settlement:
        try:
            failed = outcomes.failure(
                d,
                body,
                task.max_retries,
                exc,
                seconds,
                backoff_base=self.app.retry_backoff,
                now=time.time(),
            )
        except Exception as err:  # e.g. a payload field the failure path cannot write back
            reason = f"cannot record the failure {outcomes.error_text(exc)!r}: {err}"
            return outcomes.undecodable(d, reason, time.time())
        self.report.failed(task, body, failed, seconds)
        return failed.settlement


def sealed(body: dict[str, Any]) -> bool:
    """Whether the task came encrypted: then no reason may quote its arguments (reasons
    are stored in the DLQ and logged in plain text)."""
    return "fmt" in body and parse_format(body["fmt"]).encrypted
