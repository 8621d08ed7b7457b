"""`ebbtide worker --processes N`: N worker processes under one supervisor.

Each child is a whole `ebbtide worker` (its own task slots, broker connection and
heartbeat, so the operator's statistics count every child's slots). The supervisor:

- serves /metrics, /healthz and /readyz on the pod's port. /metrics aggregates the
  children's metrics, which they write to files in a private directory under
  `--metrics-dir` (prometheus_client's multiprocess mode; a tmpfs or emptyDir, as the
  pod's root filesystem is read-only). /readyz is ready only when every child is: it
  asks each child's probes on a Unix socket in that directory, once a second;
- restarts a child that died, after a backoff (processes.restart_delay), logged; a child
  that stops answering /healthz is killed and restarted the same way;
- forwards SIGTERM/SIGINT to every child, which drains within its own --grace-seconds,
  and kills what is left a few seconds after that.

On Linux the first N children are forked from the supervisor once it has imported the
runtime (prefork.py); a restarted child is exec'd as `python -m ebbtide worker ...`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .. import logs
from . import prefork, probes, processes

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

PROBE_EVERY_S = 1.0
WEDGED_AFTER = 5  # /healthz misses in a row (after a first answer) before a kill
KILL_MARGIN_S = 5.0  # past the children's grace, before SIGKILL
SUPERVISOR_PID_ENV = "EBBTIDE_SUPERVISOR_PID"
PR_SET_PDEATHSIG = 1
KEEP_DEAD = 32  # dead children whose metric files are kept (their counters stay summed)
EXIT_USAGE = 2  # the CLI's usage error (bad MODULE:APP, bad flag): restarting cannot help


class ChildProcess(Protocol):
    """What the supervisor needs of a child: an exec'd asyncio.subprocess.Process or a
    prefork.ForkedProcess."""

    pid: int

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


@dataclass
class Child:
    index: int
    socket: str
    proc: ChildProcess | None = None
    started: float = 0.0
    failures: int = 0  # deaths in a row, for the backoff
    restarts: int = 0
    ready: tuple[bool, str] = (False, "starting")
    answered: bool = False  # /healthz answered once since the start
    misses: int = 0


class Supervisor:
    def __init__(
        self,
        command: list[str],
        child_args: Callable[[int, str], list[str]],
        processes_n: int,
        *,
        grace_seconds: float,
        metrics_port: int | None,
        metrics_host: str,
        metrics_dir: str,
        fork_entry: Callable[[list[str]], int] | None = None,
    ) -> None:
        self.command = command  # what runs `child_args` in a new interpreter
        self.child_args = child_args  # (index, socket path) -> the child's arguments
        self.fork_entry = fork_entry  # runs `child_args` in a forked child; None: exec only
        self.n = processes_n
        self.grace_seconds = grace_seconds
        self.metrics_port, self.metrics_host = metrics_port, metrics_host
        self.base_dir = metrics_dir
        self.stopping = False
        self.exit_code = 0
        self._registry: CollectorRegistry | None = None
        self._dead: list[int] = []  # pids whose metric files are still summed, oldest first

    def run(self) -> int:
        with self._run_dir() as run_dir:
            self.prom_dir = str(run_dir / "metrics")
            os.mkdir(self.prom_dir)
            self.children = [Child(i, str(run_dir / f"child-{i}.sock")) for i in range(self.n)]
            # Forked before the event loop exists: no loop or thread state in the children.
            self._forked = (
                {c.index: self._fork(c) for c in self.children} if self.fork_entry else {}
            )
            return asyncio.run(self.main())

    async def main(self) -> int:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, sig.name)
        server = None
        if self.metrics_port is not None:
            server = await probes.serve(
                self.metrics_host, self.metrics_port, self._metrics, self._readiness
            )
        logs.log("supervisor started", processes=self.n, metrics_dir=self.prom_dir)
        keepers = [asyncio.create_task(self._keep(c)) for c in self.children]
        prober = asyncio.create_task(self._probe_loop())
        await self._stop.wait()
        code = await self._shutdown(keepers)
        prober.cancel()
        if server is not None:
            server.close()
        logs.log("supervisor stopped", exit_code=code)
        return code

    @contextlib.contextmanager
    def _run_dir(self) -> Iterator[Path]:
        """A fresh private directory per run: stale metric files never leak in."""
        try:
            os.makedirs(self.base_dir, exist_ok=True)
            path = tempfile.mkdtemp(prefix="ebbtide-worker-", dir=self.base_dir)
        except OSError as exc:
            raise ValueError(
                f"--metrics-dir {self.base_dir!r} is not writable ({exc.strerror}): "
                "point it (or PROMETHEUS_MULTIPROC_DIR) at a tmpfs or emptyDir"
            ) from exc
        try:
            yield Path(path)
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def _request_stop(self, reason: str) -> None:
        if not self.stopping:
            logs.log("supervisor stopping", reason=reason, processes=self.n)
            self.stopping = True
            self._stop.set()

    # -- children ------------------------------------------------------------------------
    def _child_env(self, child: Child) -> dict[str, str]:
        """What a child's environment adds; its probe socket is cleared for it too (a
        restarted child binds the same path)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(child.socket)
        return {
            "PROMETHEUS_MULTIPROC_DIR": self.prom_dir,
            SUPERVISOR_PID_ENV: str(os.getpid()),
            "EBBTIDE_WORKER_PROCESS": str(child.index),
        }

    def _fork(self, child: Child) -> prefork.ForkedProcess:
        assert self.fork_entry is not None
        args = self.child_args(child.index, child.socket)
        return prefork.fork_child(self.fork_entry, args, self._child_env(child))

    async def _start(self, child: Child) -> None:
        forked = self._forked.pop(child.index, None)
        if forked is not None:
            child.proc, how = forked, "forked"
        else:
            env = {**os.environ, **self._child_env(child)}
            args = self.child_args(child.index, child.socket)
            child.proc = await asyncio.create_subprocess_exec(*self.command, *args, env=env)
            how = "exec"
        child.started, child.answered, child.misses = time.monotonic(), False, 0
        child.ready = (False, "starting")
        logs.log("worker process started", process=child.index, pid=child.proc.pid, start=how)

    async def _keep(self, child: Child) -> None:
        """Run one child for as long as the supervisor runs, restarting it when it dies."""
        while not self.stopping:
            await self._start(child)
            assert child.proc is not None
            if self.stopping:  # the stop came while it was starting
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)
            code = await child.proc.wait()
            self._forget(child.proc.pid)
            child.ready = (False, "exited")
            if self.stopping:
                return
            if code == EXIT_USAGE and not child.answered:
                logs.error("worker process failed to start (usage error)", process=child.index)
                self.exit_code = EXIT_USAGE
                self._request_stop("usage-error")
                return
            lived = time.monotonic() - child.started
            child.failures = 1 if lived >= processes.STABLE_S else child.failures + 1
            delay = processes.restart_delay(child.failures)
            child.restarts += 1
            logs.warn(
                "worker process died, restarting",
                process=child.index,
                pid=child.proc.pid,
                exit_code=code,
                lived_s=round(lived, 1),
                restart_in=delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    def _forget(self, pid: int) -> None:
        """A dead child's live gauges leave the aggregate; its counters stay counted. A
        child crash-looping for days must not fill the emptyDir, so past KEEP_DEAD dead
        children the oldest one's files go, which Prometheus reads as a counter reset."""
        from prometheus_client import multiprocess

        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid, self.prom_dir)
        self._dead.append(pid)
        while len(self._dead) > KEEP_DEAD:
            for path in Path(self.prom_dir).glob(f"*_{self._dead.pop(0)}.db"):
                with contextlib.suppress(OSError):
                    path.unlink()

    async def _probe_loop(self) -> None:
        while True:
            for child in self.children:
                proc = child.proc
                if proc is None or proc.returncode is not None:
                    continue
                child.ready = await probes.ask(child.socket, "/readyz")
                healthy, _ = await probes.ask(child.socket, "/healthz")
                child.answered = child.answered or healthy
                child.misses = 0 if healthy else child.misses + 1
                if child.answered and child.misses >= WEDGED_AFTER and not self.stopping:
                    logs.error(
                        "worker process not answering /healthz, killing it",
                        process=child.index,
                        pid=proc.pid,
                    )
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            await asyncio.sleep(PROBE_EVERY_S)

    async def _shutdown(self, keepers: list[asyncio.Task]) -> int:
        live = [c.proc for c in self.children if c.proc and c.proc.returncode is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        waits = [asyncio.create_task(p.wait()) for p in live]
        if waits:
            _, late = await asyncio.wait(waits, timeout=self.grace_seconds + KILL_MARGIN_S)
            if late:
                logs.warn("worker processes past their grace, killing them", processes=len(late))
                for proc in live:
                    if proc.returncode is None:
                        with contextlib.suppress(ProcessLookupError):
                            proc.kill()
                await asyncio.wait(waits)
        for task in keepers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.exit_code == EXIT_USAGE:
            # The reason for stopping, whatever the others' codes: they were stopped for
            # it, or failed the same way (and asyncio reports 255 for a child it found
            # already reaped).
            return EXIT_USAGE
        codes = [self.exit_code, *(p.returncode or 0 for p in live)]
        return max((c for c in codes if c > 0), default=0)

    # -- probes --------------------------------------------------------------------------
    def _readiness(self) -> tuple[bool, str]:
        return processes.readiness(
            self.stopping, [(c.index, c.ready[0], c.ready[1]) for c in self.children]
        )

    def _metrics(self) -> bytes:
        from prometheus_client import generate_latest

        if self._registry is None:
            self._registry = self._build_registry()
        return generate_latest(self._registry)

    def _build_registry(self) -> CollectorRegistry:
        """The children's files, summed, plus the pod's build info, the supervisor's own
        process metrics, and how many children run and were restarted."""
        from prometheus_client import CollectorRegistry
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        from prometheus_client.multiprocess import MultiProcessCollector

        from ..buildinfo import register_process_metrics

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.prom_dir)
        register_process_metrics(registry, "worker")
        children = self.children

        class Own:
            def collect(self):
                alive = sum(1 for c in children if c.proc and c.proc.returncode is None)
                yield GaugeMetricFamily(
                    "ebbtide_worker_processes", "Worker processes running now", value=alive
                )
                yield CounterMetricFamily(
                    "ebbtide_worker_process_restarts",
                    "Worker processes restarted after they died",
                    value=sum(c.restarts for c in children),
                )

        registry.register(Own())
        return registry


def bind_to_supervisor() -> None:
    """In a child: die with the supervisor (SIGTERM, so it drains), even if it is killed."""
    parent = os.environ.get(SUPERVISOR_PID_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # the supervisor died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)
