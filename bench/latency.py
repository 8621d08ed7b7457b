"""Latency benchmark: Ebbtide vs Dramatiq vs Celery with Redis a network hop away.

Redis sits behind Shopify's toxiproxy (built from its Go module, tests/support/toxiproxy.py)
with `latency` toxics, and every worker, its task body and the timed producers talk to
Redis through it; the benchmark itself fills the queues and reads the counter directly.
toxiproxy's latency is whole milliseconds per direction, so the delays are:

    2 ms round trip:   1 ms upstream + 1 ms downstream
    10 ms round trip:  5 ms upstream + 5 ms downstream
    0.5 ms round trip: downstream only, 1 ms +/- 1 ms jitter, i.e. 0 or 1 ms per chunk
                       with equal odds (0.5 ms on average)

and the round trip actually measured through the proxy (the median of 300 PINGs, the
proxy's own hop included) is printed beside each, and is what the ceiling uses:
slots / RTT, for a task body that makes one Redis round trip.

Rows per delay, all in one run: the bare task body (no queue: 8 threads of one process
doing the body's INCR through the proxy, the most any 8-slot worker can do on this
machine, as the proxy's own hop under concurrent load adds to the idle round trip),
`def` tasks on 8 slots (Dramatiq `-p 1 -t 8`, Celery
`-P threads -c 8`, Ebbtide `--concurrency 8`, and Ebbtide's same 8 slots as 2
processes of 4 threads, `--processes 2 --concurrency 4`, system `ebbtide-p2`), `async def`
tasks at concurrency 64 (Ebbtide) against the same Dramatiq row, and a producer sending one task at a time:
single `send()` per thread, against `with app.batch():` blocks of 100.

    .venv/bin/python bench/latency.py                 # 0.5, 2 and 10 ms
    .venv/bin/python bench/latency.py --rtt 2 --quick
    .venv/bin/python bench/latency.py --rtt 2 --systems bare,ebbtide,ebbtide-p2 --probe

--probe times one outside client's INCRs through the proxy during each worker row (see
Probe): whether a slow body is slowed inside the worker or outside it.

--split-cpus 1:0 puts Redis and the proxy on CPU 1 and the workers, producers and the
benchmark itself on CPU 0 (CPU affinity, inherited by every child), as in a cluster, where
the broker is a hop away on a node of its own. On the shared default the proxy's and Redis'
CPU under load slows the round trip the task body makes (see --probe), so no worker can
reach the ceiling measured at idle; split, the far side no longer competes with the worker.

    .venv/bin/python bench/latency.py --rtt 2 --split-cpus 1:0 --probe
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(BENCH))

from measure import exit_on_sigterm, run_worker  # noqa: E402
from support.servers import redis_server  # noqa: E402
from support.toxiproxy import Toxiproxy, toxiproxy_server  # noqa: E402

COUNTER_KEY = "bench:done"
PROXY = "redis"
# (upstream ms, downstream ms, downstream jitter ms) per nominal round trip
TOXICS = {0.5: (0, 1, 1), 2.0: (1, 1, 0), 10.0: (5, 5, 0)}
SLOTS_DEF, SLOTS_ASYNC = 8, 64
PROCESSES_P2 = 2  # ebbtide-p2: SLOTS_DEF slots as PROCESSES_P2 processes of SLOTS_DEF // 2 threads
WHAT = {
    "ebbtide-async": f"async def, {SLOTS_ASYNC} slots",
    "ebbtide-p2": f"def, 8 slots as {PROCESSES_P2} processes x {SLOTS_DEF // PROCESSES_P2} threads",
}


@dataclass
class Row:
    rtt_ms: float
    measured_rtt_ms: float
    system: str
    what: str
    tasks: int
    per_s: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


def set_latency(proxy: Toxiproxy, rtt: float) -> None:
    up, down, jitter = TOXICS[rtt]
    current = proxy._call("GET", f"/proxies/{PROXY}") or {}
    for toxic in current.get("toxics", []):
        proxy._call("DELETE", f"/proxies/{PROXY}/toxics/{toxic['name']}")
    for stream, ms, jit in (("upstream", up, 0), ("downstream", down, jitter)):
        if ms or jit:
            proxy._call(
                "POST",
                f"/proxies/{PROXY}/toxics",
                {
                    "name": f"latency-{stream}",
                    "type": "latency",
                    "stream": stream,
                    "attributes": {"latency": ms, "jitter": jit},
                },
            )


@dataclass(frozen=True)
class CpuSplit:
    """--split-cpus: the CPUs of the far side (Redis, proxy) and of the near side."""

    far: frozenset[int]
    near: frozenset[int]


def parse_cpu_split(text: str, available: set[int]) -> CpuSplit:
    """`FAR:NEAR`, each a comma-separated list of CPUs, disjoint, all in `available`."""
    far_text, sep, near_text = text.partition(":")
    if not sep:
        raise ValueError(f"--split-cpus {text!r}: expected FAR:NEAR, e.g. 1:0")
    try:
        far, near = (frozenset(int(c) for c in part.split(",")) for part in (far_text, near_text))
    except ValueError:
        raise ValueError(f"--split-cpus {text!r}: CPUs are numbers, e.g. 1:0 or 2,3:0,1") from None
    if far & near:
        raise ValueError(f"--split-cpus {text!r}: CPU {min(far & near)} is on both sides")
    missing = (far | near) - available
    if missing:
        raise ValueError(
            f"--split-cpus {text!r}: CPU {min(missing)} is not available "
            f"(this process may use {sorted(available)})"
        )
    return CpuSplit(far, near)


def measured_rtt_ms(url: str, pings: int = 300) -> float:
    client = redis.Redis.from_url(url)
    client.ping()
    samples = []
    for _ in range(pings):
        started = time.perf_counter()
        client.ping()
        samples.append((time.perf_counter() - started) * 1000)
    client.close()
    return statistics.median(samples)


def worker_argv(system: str, ebbtide_args: Sequence[str] = ()) -> list[str]:
    py = sys.executable
    if system == "dramatiq":
        return [py, "-m", "dramatiq", "anchors.dramatiq_app", "-p", "1", "-t", str(SLOTS_DEF)]
    if system == "celery":
        return [
            *(py, "-m", "celery", "-A", "anchors.celery_app", "worker"),
            *("-P", "threads", "-c", str(SLOTS_DEF), "--loglevel", "WARNING"),
        ]
    slots = {"ebbtide-async": SLOTS_ASYNC, "ebbtide-p2": SLOTS_DEF // PROCESSES_P2}.get(
        system, SLOTS_DEF
    )
    processes = ["--processes", str(PROCESSES_P2)] if system == "ebbtide-p2" else []
    return [
        *(py, "-m", "ebbtide", "--log-level", "WARNING", "worker", "anchors.ebbtide_app:app"),
        *("--queues", "bench", "--concurrency", str(slots), *processes, *ebbtide_args),
    ]


class Probe:
    """--probe: one client in the benchmark's own process (its own GIL) doing INCRs one at
    a time through the proxy while a row runs. Its median round trip tells whether a slow
    task body is slowed inside the worker process (the probe stays at the idle RTT) or
    outside it, in the proxy, Redis or the machine (the probe slows down as well)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[tuple[float, float]] = []  # (monotonic end, seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="probe", daemon=True)

    def __enter__(self) -> Probe:
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        client = redis.Redis.from_url(self.url)
        while not self._stop.is_set():
            began = time.perf_counter()
            client.incr("bench:probe")
            ended = time.perf_counter()
            self.samples.append((ended, ended - began))
        client.close()

    def median_ms(self, skip_s: float = 0.0) -> float | None:
        """Median of the samples after the first `skip_s` (a worker's start-up)."""
        kept = [s for end, s in self.samples if end - self.started >= skip_s]
        return statistics.median(kept) * 1000 if kept else None


class Run:
    def __init__(self, direct: str, proxied: str, opts: argparse.Namespace) -> None:
        self.direct, self.proxied, self.opts = direct, proxied, opts
        self.client = redis.Redis.from_url(direct)
        base = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(BENCH), os.environ.get("PYTHONPATH", "")]),
            "BENCH_COUNTER_KEY": COUNTER_KEY,
            "BENCH_QUEUE": "bench",
            "PYTHONUNBUFFERED": "1",
        }
        # The benchmark fills queues directly; workers and timed producers go through the proxy.
        self.fill_env = {**base, "BENCH_BROKER_URL": direct, "BENCH_COUNTER_URL": direct}
        self.far_env = {**base, "BENCH_BROKER_URL": proxied, "BENCH_COUNTER_URL": proxied}

    def produce(self, system: str, mode: str, n: int, env: dict[str, str]) -> float:
        done = subprocess.run(
            [sys.executable, str(BENCH / "produce.py"), system, mode, str(n)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{system} {mode} enqueue failed:\n{done.stderr[-2000:]}")
        return n / json.loads(done.stdout.strip().splitlines()[-1])["seconds"]

    def worker_row(self, rtt: float, measured: float, system: str, n: int) -> Row:
        row = Row(rtt, measured, system, WHAT.get(system, "def, 8 slots"), n)
        self.client.flushall()
        fill = "bulk" if system.startswith("ebbtide") else "single"
        # ebbtide-p2 runs the same `incr` task as ebbtide, so it is filled the same way.
        self.produce("ebbtide" if system == "ebbtide-p2" else system, fill, n, self.fill_env)
        with self.probe() as probe:
            run = run_worker(
                worker_argv(system, self.opts.ebbtide_args.split()),
                self.far_env,
                self.direct,
                COUNTER_KEY,
                n,
                timeout=max(120.0, n / 20),
                log_path=self.opts.log_path,
            )
        if run.error:
            row.note = run.error
        else:
            # Steady state: from the first task done to the last (start-up is reported
            # apart), so a row measures the link, not the import time of each library.
            busy = run.seconds - (run.first_task_s or 0.0)
            row.per_s = (n - 1) / busy if busy > 0 else None
            row.extra["startup_s"] = run.first_task_s
            row.note = f"start-up {run.first_task_s or 0:.2f} s"
            self._note_probe(row, probe, run.first_task_s or 0.0)
        self.client.flushall()
        return row

    def probe(self) -> Probe | contextlib.nullcontext[None]:
        return Probe(self.proxied) if self.opts.probe else contextlib.nullcontext()

    @staticmethod
    def _note_probe(row: Row, probe: Probe | None, skip_s: float) -> None:
        if probe is not None and (ms := probe.median_ms(skip_s)) is not None:
            row.extra["probe_rtt_ms"] = ms
            row.note = f"{row.note}; probe RTT {ms:.2f} ms".lstrip("; ")

    def bare_row(self, rtt: float, measured: float, n: int) -> Row:
        """The task body alone on 8 threads through the proxy: no queue, no worker."""
        row = Row(rtt, measured, "bare", "task body alone, 8 threads", n)
        self.client.flushall()
        with self.probe() as probe:
            row.per_s = self.produce("bare", f"threads{SLOTS_DEF}", n, self.far_env)
        self._note_probe(row, probe, 0.5)  # produce.py's own start-up
        self.client.flushall()
        return row

    def producer_row(self, rtt: float, measured: float, system: str, mode: str, n: int) -> Row:
        self.client.flushall()
        what = {"single": "send(), 1 thread", "batch": "app.batch() blocks of 100"}[mode]
        row = Row(rtt, measured, system, what, n)
        row.per_s = self.produce(system, mode, n, self.far_env)
        self.client.flushall()
        return row


def tasks_for(rtt: float, quick: bool) -> tuple[int, int]:
    """(worker tasks, single sends): a few seconds per row at each delay."""
    worker = {0.5: 10_000, 2.0: 6_000, 10.0: 2_000}[rtt]
    single = {0.5: 3_000, 2.0: 1_000, 10.0: 300}[rtt]
    if quick:
        return worker // 4, single // 4
    return worker, single


def ratios(rows: list[Row]) -> list[str]:
    """The side-by-side lines: each Ebbtide row against Dramatiq, Celery and the ceiling."""
    lines = []
    for rtt in sorted({r.rtt_ms for r in rows}):
        at = {(r.system, r.what): r for r in rows if r.rtt_ms == rtt}
        measured = next(r.measured_rtt_ms for r in rows if r.rtt_ms == rtt)
        dram = at.get(("dramatiq", "def, 8 slots"))
        cel = at.get(("celery", "def, 8 slots"))
        eb = at.get(("ebbtide", "def, 8 slots"))
        ea = at.get(("ebbtide-async", WHAT["ebbtide-async"]))
        p2 = at.get(("ebbtide-p2", WHAT["ebbtide-p2"]))
        single = at.get(("ebbtide", "send(), 1 thread"))
        batch = at.get(("ebbtide", "app.batch() blocks of 100"))
        bare = at.get(("bare", "task body alone, 8 threads"))
        ceiling = SLOTS_DEF / (measured / 1000)

        def x(a: Row | None, b: Row | None) -> str:
            if a is None or b is None or not a.per_s or not b.per_s:
                return "n/a"
            return f"{a.per_s / b.per_s:.2f}x"

        def per_rtt(row: Row | None, digits: int, rtt_ms: float = measured) -> str:
            return f"{row.per_s * rtt_ms / 1000:.{digits}f}x" if row and row.per_s else "n/a"

        # A row left out with --systems prints n/a, so a partial run still has its ratios.
        lines.append(
            f"| {rtt:g} ms | {measured:.2f} ms | {ceiling:,.0f}/s | "
            f"{_share(eb, ceiling)} | {_share(p2, ceiling)} | {_share(bare, ceiling)} | "
            f"{x(eb, bare)} | {x(p2, bare)} | "
            f"{x(eb, dram)} | {x(eb, cel)} | {x(ea, dram)} | "
            f"{per_rtt(single, 2)} | {per_rtt(batch, 1)} | {x(batch, single)} |"
        )
    head = (
        "| RTT (toxic) | RTT measured | def ceiling 8/RTT | Ebbtide def / ceiling | "
        "Ebbtide def 2x4 / ceiling | bare body / ceiling | Ebbtide def / bare body | "
        "Ebbtide def 2x4 / bare body | Ebbtide def vs Dramatiq | vs Celery | "
        "Ebbtide async(64) vs Dramatiq | send() vs 1/RTT | batch vs 1/RTT | batch vs send() |\n|"
        + "---|"
        * 14
    )
    return [head, *lines]


def _share(row: Row | None, ceiling: float) -> str:
    return f"{row.per_s / ceiling:.0%}" if row is not None and row.per_s else "n/a"


def table(rows: list[Row]) -> str:
    out = [
        "| RTT | measured RTT | system | what | tasks | per s | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rate = f"{r.per_s:,.0f}" if r.per_s else "-"
        out.append(
            f"| {r.rtt_ms:g} ms | {r.measured_rtt_ms:.2f} ms | {r.system} | {r.what} | "
            f"{r.tasks:,} | {rate} | {r.note} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rtt", default="0.5,2,10", help="round trips in ms, of 0.5, 2, 10")
    p.add_argument(
        "--systems", default="bare,dramatiq,celery,ebbtide,ebbtide-p2,ebbtide-async,producers"
    )
    p.add_argument("--quick", action="store_true", help="a quarter of the tasks")
    p.add_argument(
        "--tasks", type=int, default=None, help="tasks per worker row (e.g. a long one to profile)"
    )
    p.add_argument(
        "--ebbtide-args", default="", help='extra Ebbtide worker flags, e.g. "--prefetch 8"'
    )
    p.add_argument(
        "--probe",
        action="store_true",
        help="time one outside client's INCRs through the proxy during each worker row",
    )
    p.add_argument(
        "--split-cpus",
        default=None,
        metavar="FAR:NEAR",
        help="Redis and the proxy on the FAR CPUs, workers and producers on the NEAR ones",
    )
    p.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--log", dest="log_path", default=None, help="workers' output (temp file)")
    opts = p.parse_args(argv)
    split = None
    if opts.split_cpus is not None:
        try:
            split = parse_cpu_split(opts.split_cpus, os.sched_getaffinity(0))
        except ValueError as e:
            p.error(str(e))
    exit_on_sigterm()
    if opts.log_path is None:
        opts.log_path = os.path.join(tempfile.gettempdir(), f"ebbtide-latency-{os.getpid()}.log")
    delays = [float(v) for v in opts.rtt.split(",") if v.strip()]
    for d in delays:
        if d not in TOXICS:
            p.error(f"--rtt {d:g}: choose among {', '.join(f'{k:g}' for k in TOXICS)}")
    if opts.tasks is not None and opts.tasks < 2:
        p.error(f"--tasks {opts.tasks}: at least 2 (the rate runs from the first to the last)")
    systems = [s.strip() for s in opts.systems.split(",") if s.strip()]

    rows: list[Row] = []
    with contextlib.ExitStack() as servers:
        # Children inherit the affinity of the thread that starts them (this one, before
        # any other thread exists): the servers get the far CPUs, all later children the near.
        if split is not None:
            os.sched_setaffinity(0, split.far)
        direct = servers.enter_context(redis_server())
        proxy = servers.enter_context(toxiproxy_server())
        if split is not None:
            os.sched_setaffinity(0, split.near)
            log(f"Redis and the proxy on CPU {sorted(split.far)}, the rest on {sorted(split.near)}")
        port = int(direct.rsplit(":", 1)[1].split("/")[0])
        proxied_port = proxy.proxy(PROXY, port)
        proxied = f"redis://127.0.0.1:{proxied_port}/0"
        run = Run(direct, proxied, opts)
        for rtt in delays:
            set_latency(proxy, rtt)
            measured = measured_rtt_ms(proxied)
            log(f"RTT {rtt:g} ms: measured {measured:.2f} ms")
            n, single = tasks_for(rtt, opts.quick)
            n = opts.tasks or n
            for system in systems:
                if system == "bare":
                    rows.append(run.bare_row(rtt, measured, n))
                    log(f"  bare body, 8 threads: {rows[-1].per_s or 0:,.0f}/s {rows[-1].note}")
                    continue
                if system == "producers":
                    for mode, count in (("single", single), ("batch", max(single * 20, 5000))):
                        row = run.producer_row(rtt, measured, "ebbtide", mode, count)
                        rows.append(row)
                        log(f"  ebbtide {row.what}: {row.per_s:,.0f}/s")
                    continue
                row = run.worker_row(rtt, measured, system, n)
                rows.append(row)
                log(f"  {system} {row.what}: {row.per_s or 0:,.0f}/s {row.note}")
    print()
    print(table(rows))
    print()
    print("\n".join(ratios(rows)))
    print(f"\nworker output: {opts.log_path}")
    if opts.json:
        Path(opts.json).write_text(json.dumps([r.__dict__ for r in rows], indent=2) + "\n")
    return 0 if all(r.per_s for r in rows) else 1


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
