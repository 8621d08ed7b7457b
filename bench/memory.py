"""Worker memory: RSS per process when idle, and what 1,000 held tasks add, for Ebbtide,
Dramatiq and Celery on the same private Redis, in one run.

"Held" is measured two ways, each against the same worker's idle RSS:

- prefetched: 1,008 ready tasks whose body sleeps; 8 run and each worker is told to hold
  the other 1,000 (Ebbtide `--concurrency 8 --prefetch 1000`; Dramatiq `-t 8` with
  `dramatiq_queue_prefetch=1008`; Celery `-P threads -c 8 --prefetch-multiplier 126`);
- delayed: 1,000 tasks due in an hour, with each system's default settings. Dramatiq and
  Celery keep delayed tasks in the worker's memory (Dramatiq prefetches its delay queue,
  Celery holds ETA tasks); Ebbtide keeps them in Redis's delayed set.

RSS is the kernel's current VmRSS summed over the worker's process tree, read once it
has been stable for 2 s (the worker has taken all it will take). The two-process rows
also give PSS, summed the same way: a page shared by N processes counts 1/N in each,
so the sum is what the tree really holds (Ebbtide's children forked from its
supervisor share the runtime's pages, which RSS counts once per process).

    .venv/bin/python bench/memory.py
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import redis

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(BENCH))

from measure import compile_sources, stop_group  # noqa: E402
from support.servers import redis_server  # noqa: E402

HELD, RUNNING = 1000, 8
MIB = 1 << 20


def worker(system: str, mode: str, processes: int = 1) -> tuple[list[str], dict[str, str]]:
    """`ebbtide-exec`: Ebbtide with `--start-children exec` (each child a new interpreter)."""
    py = sys.executable
    held = mode == "prefetched"
    if system in ("ebbtide", "ebbtide-exec"):
        argv = [py, "-m", "ebbtide", "--log-level", "WARNING", "worker", "anchors.ebbtide_app:app"]
        argv += ["--queues", "bench", "--concurrency", str(RUNNING)]
        argv += ["--processes", str(processes)]
        if system == "ebbtide-exec":
            argv += ["--start-children", "exec"]
        return argv + (["--prefetch", str(HELD)] if held else []), {}
    if system == "dramatiq":
        env = {"dramatiq_queue_prefetch": str(HELD + RUNNING)} if held else {}
        argv = [py, "-m", "dramatiq", "anchors.dramatiq_app", "-p", str(processes)]
        return argv + ["-t", str(RUNNING)], env
    argv = [py, "-m", "celery", "-A", "anchors.celery_app", "worker", "--loglevel", "WARNING"]
    argv += ["-P", "threads", "-c", str(RUNNING)]
    if held:
        argv += ["--prefetch-multiplier", str((HELD + RUNNING) // RUNNING)]
    return argv, {}


def fill(system: str, mode: str) -> None:
    """Runs in a child (the anchors read the env at import): enqueue the held tasks."""
    if system == "ebbtide":
        from anchors import ebbtide_app as a

        if mode == "prefetched":
            a.hold.send_many(() for _ in range(HELD + RUNNING))
        else:
            a.incr.options(delay=3600).send_many(() for _ in range(HELD))
    elif system == "dramatiq":
        from anchors import dramatiq_app as a

        for _ in range(HELD + RUNNING if mode == "prefetched" else HELD):
            if mode == "prefetched":
                a.hold.send()
            else:
                a.incr.send_with_options(delay=3_600_000)
    else:
        from anchors import celery_app as a

        for _ in range(HELD + RUNNING if mode == "prefetched" else HELD):
            if mode == "prefetched":
                a.hold.delay()
            else:
                a.incr.apply_async(countdown=3600)


def tree_rss(pid: int) -> tuple[int, int]:
    """(VmRSS summed over the process tree, processes)."""
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total, len(procs)
    return 0, 0


def tree_pss(pid: int) -> int:
    """PSS summed over the process tree (smaps_rollup): shared pages counted once."""
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        total = 0
        for p in (root, *root.children(recursive=True)):
            with contextlib.suppress(psutil.Error):
                total += p.memory_full_info().pss
        return total
    return 0


def left_in_broker(system: str, client: redis.Redis, url: str) -> int:
    """Tasks still in Redis, not in the worker: shows what the worker really took."""
    if system == "ebbtide":
        from ebbtide.stats import read_stats

        q = read_stats(url).queues.get("bench")
        return 0 if q is None else q.ready + q.delayed
    lists = [k for k in client.scan_iter() if client.type(k) == b"list"]
    return sum(client.llen(k) for k in lists)


def settled_rss(
    argv: list[str], env: dict[str, str], log_path: str, left: Callable[[], int]
) -> tuple[int, int, int, int]:
    """(RSS, processes, tasks left in the broker, PSS) once the tree's RSS is stable."""
    compile_sources()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        time.sleep(1.0)  # the worker's own start-up; a change below 1 MiB for 2 s ends it
        last, stable_since = tree_rss(proc.pid), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.25)
            now = tree_rss(proc.pid)
            if abs(now[0] - last[0]) > MIB or now[1] != last[1]:
                last, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since >= 2.0:
                break
        if proc.poll() is not None:
            raise RuntimeError(f"{argv[2:5]} exited with {proc.returncode}; log {log_path}")
        return last[0], last[1], left(), tree_pss(proc.pid)
    finally:
        stop_group(proc, grace=3)


def main() -> int:
    if sys.argv[1:2] == ["--fill"]:
        fill(sys.argv[2], sys.argv[3])
        return 0
    log_path = os.path.join(tempfile.gettempdir(), f"ebbtide-memory-{os.getpid()}.log")
    results: dict[tuple[str, str], tuple[int, int, int, int]] = {}
    with redis_server() as url:
        client = redis.Redis.from_url(url)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(BENCH), os.environ.get("PYTHONPATH", "")]),
            "BENCH_BROKER_URL": url,
            "BENCH_COUNTER_URL": url,
            "BENCH_QUEUE": "bench",
            "BENCH_HOLD_S": "120",
        }
        for system in ("ebbtide", "dramatiq", "celery"):
            for mode in ("idle", "prefetched", "delayed"):
                client.flushall()
                if mode != "idle":
                    subprocess.run(
                        [sys.executable, __file__, "--fill", system, mode], env=env, check=True
                    )
                argv, extra = worker(system, mode)
                results[system, mode] = settled_rss(
                    argv,
                    {**env, **extra},
                    log_path,
                    lambda s=system: left_in_broker(s, client, url),
                )
                rss, n, left, _ = results[system, mode]
                print(
                    f"{system} {mode}: {rss / MIB:.1f} MiB in {n} processes, {left} tasks left "
                    "in Redis",
                    file=sys.stderr,
                )
        two = {}
        for system in ("ebbtide", "ebbtide-exec", "dramatiq"):  # idle, two worker processes
            client.flushall()
            argv, extra = worker(system, "idle", processes=2)
            two[system] = settled_rss(argv, {**env, **extra}, log_path, lambda: 0)
    print(f"\n{os.cpu_count()} cores · Python {sys.version.split()[0]} · same private Redis\n")
    print(
        "| system | processes | idle RSS MiB (tree) | idle RSS MiB per process | "
        "+1,000 prefetched MiB (left in Redis) | +1,000 delayed MiB (left in Redis) | "
        "idle PSS MiB (tree) |"
    )
    print("|---|---|---|---|---|---|---|")
    for system in ("ebbtide", "dramatiq", "celery"):
        idle, n, _, pss = results[system, "idle"]
        pre, _, pre_left, _ = results[system, "prefetched"]
        late, _, late_left, _ = results[system, "delayed"]
        print(
            f"| {system} | {n} | {idle / MIB:.1f} | {idle / n / MIB:.1f} | "
            f"{(pre - idle) / MIB:+.1f} ({pre_left}) | {(late - idle) / MIB:+.1f} ({late_left}) | "
            f"{pss / MIB:.1f} |"
        )
    for system, flag in (
        ("ebbtide", "--processes 2"),
        ("ebbtide-exec", "--processes 2 --start-children exec"),
        ("dramatiq", "-p 2"),
    ):
        rss, n, _, pss = two[system]
        print(
            f"| {system.split('-')[0]} {flag} | {n} | {rss / MIB:.1f} | {rss / n / MIB:.1f} | | | "
            f"{pss / MIB:.1f} |"
        )
    print(f"\nworker output: {log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
