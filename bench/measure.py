"""Run one worker process against a filled queue and time it until the counter says done.

The clock starts just before the process is spawned, so start-up is included, and stops
when the shared Redis counter reaches N. Peak memory is each process's VmHWM (the
kernel's own high-water mark, so no sample can miss a spike), summed over the worker's
process tree, which is what a pod's memory limit sees. The process group is killed in
`finally`, so nothing outlives the benchmark.
"""

from __future__ import annotations

import compileall
import contextlib
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import redis


def exit_on_sigterm() -> None:
    """Make `kill` of a benchmark run every `finally`, so that no worker or server
    outlives it. Later SIGTERMs are ignored: a second one arriving during the cleanup
    would cut it short and leave a server behind."""

    def _exit(*_: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sys.exit(143)

    signal.signal(signal.SIGTERM, _exit)


BENCH = Path(__file__).resolve().parent
SOURCES = (BENCH.parent / "worker-runtime" / "ebbtide", BENCH / "anchors")


@functools.cache
def compile_sources(pythonpath: str | None = None) -> None:
    """Byte-compile Ebbtide's checkout and the bench apps before any worker starts.
    An installed package (the runtime image, or Dramatiq, Celery and redis-py in the
    venv) comes with its bytecode; the editable checkout has none when the environment
    sets PYTHONDONTWRITEBYTECODE (this machine's does), and then every Ebbtide process
    compiled ~50 modules at start-up: 0.40 s against 0.29 s to import the worker here.
    Another checkout run beside this one, an `ebbtide` package in a `pythonpath` entry
    (default: $PYTHONPATH; an A/B against another revision), is compiled too: left out,
    it started ~0.1 s later than this one and lost every such A/B."""
    if pythonpath is None:
        pythonpath = os.environ.get("PYTHONPATH", "")
    for path in (*SOURCES, *_ebbtide_packages(pythonpath)):
        compileall.compile_dir(path, quiet=1)


def _ebbtide_packages(pythonpath: str) -> list[Path]:
    """Every `ebbtide` package in a PYTHONPATH-style list (another checkout's worker-runtime)."""
    entries = map(Path, filter(None, pythonpath.split(os.pathsep)))
    return [p / "ebbtide" for p in entries if (p / "ebbtide").is_dir()]


POLL_S = 0.005  # counter polls: ~200 GETs/s, noise next to the workers' INCRs
SAMPLE_S = 0.05  # process-tree scans, to catch every process before it exits


@dataclass
class WorkerRun:
    seconds: float  # spawn -> counter == N
    first_task_s: float | None  # spawn -> counter > 0: the start-up share of `seconds`
    peak_rss_bytes: int
    processes: int
    error: str | None = None
    steady_per_s: float | None = None  # between 10% and 90% done: no start-up, no tail


def steady_rate(tasks: int, crossed: dict[float, float]) -> float | None:
    """Tasks/s between the 10% and 90% marks (`crossed`: share -> seconds since spawn,
    at the first poll that saw it), which spawn-to-done hides under start-up and ramp."""
    low, high = crossed.get(0.1), crossed.get(0.9)
    if low is None or high is None or high <= low:
        return None
    return 0.8 * tasks / (high - low)


def run_worker(
    argv: list[str],
    env: dict[str, str],
    counter_url: str,
    counter_key: str,
    tasks: int,
    timeout: float,
    log_path: str,
) -> WorkerRun:
    compile_sources()
    counter = redis.Redis.from_url(counter_url)
    peaks: dict[int, int] = {}
    stop = threading.Event()
    first: float | None = None
    crossed: dict[float, float] = {}
    error: str | None = None
    with open(log_path, "ab") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
        )
    sampler = threading.Thread(target=_sample_tree, args=(proc.pid, peaks, stop), daemon=True)
    sampler.start()
    try:
        deadline = started + timeout
        while True:
            done = int(counter.get(counter_key) or 0)
            now = time.perf_counter()
            if done and first is None:
                first = now - started
            for mark in (0.1, 0.9):
                if mark not in crossed and done >= mark * tasks:
                    crossed[mark] = now - started
            if done >= tasks:
                break
            if proc.poll() is not None:
                error = f"worker exited with code {proc.returncode} after {done}/{tasks} tasks"
                break
            if now > deadline:
                error = f"timed out after {timeout:.0f}s at {done}/{tasks} tasks"
                break
            time.sleep(POLL_S)
        seconds = now - started
        _record_tree(proc.pid, peaks)  # final high-water marks, before the group dies
    finally:
        stop.set()
        stop_group(proc)
        sampler.join(5)
        counter.close()
    return WorkerRun(
        seconds, first, sum(peaks.values()), len(peaks), error, steady_rate(tasks, crossed)
    )


def stop_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the worker's whole process group, then SIGKILL whatever is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
            # The leader is gone; sweep stragglers left in its group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            return


def _sample_tree(pid: int, peaks: dict[int, int], stop: threading.Event) -> None:
    while not stop.wait(SAMPLE_S):
        _record_tree(pid, peaks)


def _record_tree(pid: int, peaks: dict[int, int]) -> None:
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error, OSError):
                hwm = _vm_hwm(p.pid) or p.memory_info().rss
                peaks[p.pid] = max(peaks.get(p.pid, 0), hwm)


def _vm_hwm(pid: int) -> int:
    """Peak resident set size of one process, in bytes (0 if /proc cannot tell)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0
