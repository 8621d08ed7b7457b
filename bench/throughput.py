"""Throughput benchmark: Ebbtide vs Celery vs Dramatiq, one worker process each, same broker.

Method (the one the published anchor figures use, so they compare): every task does one Redis
INCR. N tasks are enqueued, then ONE worker process starts and the clock runs from its
spawn until the counter reaches N (start-up included): processed/s = N / that time.
Enqueue/s is timed on each system's single-send loop and on its bulk call; a raw
pipelined RPUSH (or pika publish) loop gives the broker's limit. All systems run in the
same invocation against the same private broker, flushed between systems.

    .venv/bin/python bench/throughput.py                   # Redis and RabbitMQ rows
    .venv/bin/python bench/throughput.py --broker redis --tasks 20000 --json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import redis

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(BENCH))

from ebbtide.worker.affinity import cpu_list  # noqa: E402
from measure import exit_on_sigterm, run_worker  # noqa: E402
from report import SystemResult, median_of, render_table, render_targets, targets  # noqa: E402
from support.servers import redis_server  # noqa: E402

DEFAULT_TASKS = {"redis": 20_000, "rabbitmq": 10_000}
QUICK_TASKS = {"redis": 2_000, "rabbitmq": 1_000}
COUNTER_KEY = "bench:done"
REDIS_ONLY = (
    "bare",
    "dramatiq-p2",
    "ebbtide-p2",
    "ebbtide-metrics-p2",
    "ebbtide-pinned-p2",
    "dramatiq-pinned-p2",
    "ebbtide-exec-p2",
    "ebbtide-pinned-exec-p2",
)
EBBTIDE_DEF = (
    "ebbtide",
    "ebbtide-p2",
    "ebbtide-all-threads",
    "ebbtide-metrics",
    "ebbtide-metrics-p2",
    "ebbtide-pinned",
    "ebbtide-pinned-p2",
    "ebbtide-exec-p2",
    "ebbtide-pinned-exec-p2",
)


def worker_argv(system: str, concurrency: int) -> list[str]:
    """The worker's command line; a `-p2` system is the same worker with two processes
    (Dramatiq `-p 2`, Ebbtide `--processes 2`), each with its own 8 slots. An
    `ebbtide-metrics` system serves /metrics on an ephemeral port, as a pod does: the
    others record no metrics, which under --processes N is not what production pays.
    An `-pinned` system pins each worker process to one CPU of this machine, in turn:
    Ebbtide with `--cpu-affinity`, Dramatiq with BENCH_PIN_CPUS (anchors/common.py), so
    the pinned rows compare like for like."""
    py = sys.executable
    procs = "2" if system.endswith("-p2") else "1"
    if system == "celery":
        return [
            *(py, "-m", "celery", "-A", "anchors.celery_app", "worker"),
            *("-P", "solo", "-c", "1", "--loglevel", "WARNING"),
        ]  # Celery's defaults otherwise: --without-heartbeat makes it ~10x slower on AMQP
    here = cpu_list(os.sched_getaffinity(0))
    if system in ("dramatiq", "dramatiq-p2"):
        return [py, "-m", "dramatiq", "anchors.dramatiq_app", "-p", procs, "-t", "8"]
    if system in ("dramatiq-pinned", "dramatiq-pinned-p2"):
        plain = system.replace("-pinned", "")
        return ["env", f"BENCH_PIN_CPUS={here}", *worker_argv(plain, concurrency)]
    if system in (*EBBTIDE_DEF, "ebbtide-async"):
        argv = [
            *(py, "-m", "ebbtide", "--log-level", "WARNING", "worker", "anchors.ebbtide_app:app"),
            *("--queues", "bench", "--concurrency", str(concurrency)),
        ]
        if system == "ebbtide-all-threads":  # the pool before --thread-limit auto: all start
            argv += ["--thread-limit", str(concurrency)]
        if system.startswith("ebbtide-metrics"):
            argv += ["--metrics-port", "0"]
        if system.startswith("ebbtide-pinned"):
            argv += ["--cpu-affinity", here]
        if "-exec-" in system:  # the children as new interpreters, not forked
            argv += ["--start-children", "exec"]
        return argv if procs == "1" else [*argv, "--processes", procs]
    raise ValueError(f"no worker for {system!r}")


BULK_HOW = {
    **dict.fromkeys((*EBBTIDE_DEF, "ebbtide-async"), "send_many"),
    "dramatiq": "group, not pipelined",
    "dramatiq-p2": "group, not pipelined",
    "dramatiq-pinned": "group, not pipelined",
    "dramatiq-pinned-p2": "group, not pipelined",
    "raw": "pipelined",
}


class Bench:
    """One broker's run: shared env, logs, and the per-system steps."""

    def __init__(self, broker: str, broker_url: str, counter_url: str, tasks: int, opts) -> None:
        self.broker, self.broker_url, self.counter_url = broker, broker_url, counter_url
        self.tasks, self.opts = tasks, opts
        self.counter = redis.Redis.from_url(counter_url)
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(BENCH), os.environ.get("PYTHONPATH", "")]),
            "BENCH_BROKER_URL": broker_url,
            "BENCH_COUNTER_URL": counter_url,
            "BENCH_COUNTER_KEY": COUNTER_KEY,
            "BENCH_QUEUE": "bench",
            "PYTHONUNBUFFERED": "1",
        }

    def reset(self) -> None:
        """Between systems: an empty Redis (and, on RabbitMQ, empty bench queues)."""
        self.counter.flushall()
        if self.broker == "rabbitmq":
            _purge_amqp(
                self.broker_url,
                [
                    "bench",
                    "bench-raw",
                    "bench.DQ",
                    "bench.XQ",
                    "ebbtide.bench",
                    "ebbtide.bench.dead",
                ],
            )

    def produce(self, system: str, mode: str, n: int) -> float:
        """Rate of one enqueue loop, run in a fresh child process."""
        # The same client, whatever the worker's processes, thread limit or metrics.
        sender = "ebbtide" if system in EBBTIDE_DEF else system.split("-")[0]
        done = subprocess.run(
            [sys.executable, str(BENCH / "produce.py"), sender, mode, str(n)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=max(120, n / 100),
        )
        if done.returncode != 0:
            raise RuntimeError(f"{system} {mode} enqueue failed:\n{done.stderr[-2000:]}")
        return n / json.loads(done.stdout.strip().splitlines()[-1])["seconds"]

    def run_system(self, system: str) -> SystemResult:
        row = SystemResult(system, self.broker, self.tasks)
        log(f"[{self.broker}] {system}")
        if system in ("raw", "bare"):
            self.reset()
            rate = self.produce(system, "bulk", self.tasks)
            if system == "raw":
                how = BULK_HOW["raw"] if self.broker == "redis" else "no confirms"
                row.enqueue_bulk_per_s, row.bulk_how = rate, how
            else:
                row.processed_per_s = rate
            return row
        if system.startswith("ebbtide") and not ebbtide_supports(self.broker_url):
            row.note = "n/a (not yet supported)"
            return row
        if BULK_HOW.get(system):
            self.reset()
            row.enqueue_bulk_per_s = self.produce(system, "bulk", self.tasks)
            row.bulk_how = BULK_HOW[system]
        self.reset()
        row.enqueue_single_per_s = self.produce(system, "single", self.tasks)
        concurrency = self.opts.ebbtide_concurrency
        if system == "ebbtide-async":
            concurrency = self.opts.ebbtide_async_concurrency
        argv = worker_argv(system, concurrency)
        if self.opts.ebbtide_args and system.startswith("ebbtide"):
            argv += shlex.split(self.opts.ebbtide_args)
        if self.opts.pin_workers is not None:  # what-if: every system's worker on one CPU
            argv = ["taskset", "-c", str(self.opts.pin_workers), *argv]
        row.worker = " ".join(a if a != sys.executable else "python" for a in argv)
        run = run_worker(
            argv,
            self.env,
            self.counter_url,
            COUNTER_KEY,
            self.tasks,
            timeout=max(60.0, self.tasks / 100),
            log_path=self.opts.log_path,
        )
        row.seconds, row.first_task_s = run.seconds, run.first_task_s
        row.steady_per_s = run.steady_per_s
        if run.error:
            row.note = run.error
            log(f"  {system}: {run.error} (log: {self.opts.log_path})")
        else:
            row.processed_per_s = self.tasks / run.seconds
            row.peak_rss_bytes, row.processes = run.peak_rss_bytes, run.processes
        self.reset()
        return row


def ebbtide_supports(url: str) -> bool:
    import ebbtide.brokers

    try:
        ebbtide.brokers.check_scheme(url)
    except Exception:
        return False
    return True


def _purge_amqp(url: str, queues: list[str]) -> None:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        for name in queues:
            channel = connection.channel()
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                channel.queue_delete(name)
            with contextlib.suppress(Exception):
                channel.close()
    finally:
        connection.close()


def broker_runs(which: str) -> Iterator[tuple[str, str, str]]:
    """Yield (broker, broker_url, counter_url), one broker at a time: RabbitMQ is only
    started after the Redis rows, so an idle Erlang VM never steals their CPU."""
    with redis_server() as redis_url:
        if which in ("redis", "all"):
            yield "redis", redis_url, redis_url
        if which in ("rabbitmq", "all"):
            from support.servers import rabbitmq_server

            log("starting a private rabbitmq-server ...")
            with rabbitmq_server(management=False) as rabbit:
                yield "rabbitmq", rabbit["url"], redis_url


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--broker", choices=["redis", "rabbitmq", "all"], default="all")
    p.add_argument("--tasks", type=int, default=None, help="tasks on Redis (default 20,000)")
    p.add_argument(
        "--rabbitmq-tasks", type=int, default=None, help="tasks on RabbitMQ (default 10,000)"
    )
    p.add_argument("--quick", action="store_true", help="a small run (2,000 / 1,000 tasks)")
    p.add_argument(
        "--systems",
        default="raw,bare,dramatiq,celery,ebbtide,ebbtide-async,dramatiq-p2,ebbtide-p2",
        help="comma-separated subset of raw,bare,dramatiq,celery,ebbtide,ebbtide-async,\n"
        "dramatiq-p2,ebbtide-p2 (two worker processes each; Redis only), and\n"
        "ebbtide-all-threads (--thread-limit = --concurrency: every thread starts tasks),\n"
        "ebbtide-metrics and ebbtide-metrics-p2 (serving /metrics, as a pod does),\n"
        "ebbtide-exec-p2 and ebbtide-pinned-exec-p2 (--start-children exec: the\n"
        "children started as new interpreters, not forked from the supervisor)",
    )
    p.add_argument(
        "--ebbtide-concurrency", type=int, default=8, help="sync task threads (default 8)"
    )
    p.add_argument(
        "--ebbtide-async-concurrency",
        type=int,
        default=64,
        help="async task slots (default 64)",
    )
    p.add_argument(
        "--ebbtide-args", default="", help='extra flags for every Ebbtide worker: "--prefetch 8"'
    )
    p.add_argument("--repeat", type=int, default=1, help="run each system N times, report medians")
    p.add_argument(
        "--pin-workers",
        type=int,
        default=None,
        metavar="CPU",
        help="run every worker under `taskset -c CPU` (an experiment; off by default)",
    )
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="FILE",
        help="results as JSON: on stdout instead of the table, or into FILE as well",
    )
    p.add_argument("--log", dest="log_path", default=None, help="workers' output (temp file)")
    opts = p.parse_args(argv)
    exit_on_sigterm()
    if opts.log_path is None:
        opts.log_path = os.path.join(tempfile.gettempdir(), f"ebbtide-bench-{os.getpid()}.log")
    sizes = dict(QUICK_TASKS if opts.quick else DEFAULT_TASKS)
    if opts.tasks:
        sizes["redis"] = opts.tasks
    if opts.rabbitmq_tasks:
        sizes["rabbitmq"] = opts.rabbitmq_tasks
    systems = [s.strip() for s in opts.systems.split(",") if s.strip()]

    rows: list[SystemResult] = []
    runs = broker_runs(opts.broker)
    try:
        for broker, broker_url, counter_url in runs:
            bench = Bench(broker, broker_url, counter_url, sizes[broker], opts)
            # bare and the two-process rows: Redis only (the target is on Redis)
            here = [s for s in systems if broker == "redis" or s not in REDIS_ONLY]
            # Round-robin (every system once per round), so slow drift in a shared
            # machine's load hits every row alike instead of whichever ran last.
            runs_of: dict[str, list[SystemResult]] = {s: [] for s in here}
            for _ in range(opts.repeat):
                for system in here:
                    run = bench.run_system(system)
                    runs_of[system].append(run)
                    if run.processed_per_s:
                        steady = f"{run.steady_per_s:,.0f}/s" if run.steady_per_s else "-"
                        log(f"  {system}: {run.processed_per_s:,.0f}/s (steady {steady})")
            for system in here:
                row = median_of(runs_of[system])
                row.extra["processed_per_s_runs"] = [r.processed_per_s for r in runs_of[system]]
                rows.append(row)
    finally:
        runs.close()  # stops the servers even when a step failed

    found = targets(rows)
    if opts.json:
        document = json.dumps(
            {
                "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "machine": machine(),
                "command": " ".join(["bench/throughput.py", *(argv or sys.argv[1:])]),
                "repeat": opts.repeat,
                "results": [dataclasses.asdict(r) for r in rows],
                "targets": [{**dataclasses.asdict(t), "verdict": t.verdict} for t in found],
            },
            indent=2,
        )
        if opts.json == "-":
            print(document)
        else:
            Path(opts.json).write_text(document + "\n")
    if opts.json != "-":
        runs = f" · medians of {opts.repeat} runs" if opts.repeat > 1 else ""
        if opts.pin_workers is not None:
            runs += f" · workers pinned to CPU {opts.pin_workers}"
        print(f"\n{machine()}{runs}\n")
        print(render_table(rows))
        print()
        print(render_targets(found))
        print(f"\nworker output: {opts.log_path}")
    return 0 if all(r.note in ("", "n/a (not yet supported)") for r in rows) else 1


def machine() -> str:
    """The run's context. The client libraries are in it because the task body's Redis
    call is redis-py's, the same in every system: a slower redis-py (8.x against 7.x,
    bench/gil_threads.py) adds the same time to every row and so shrinks every ratio."""
    return (
        f"{datetime.date.today()} · {os.cpu_count()} cores ({_cpu_model()}) · "
        f"Python {platform.python_version()} · {_version('redis-server', '--version')} · "
        f"redis-py {_dist('redis')} · pika {_dist('pika')} · loopback"
    )


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def _dist(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _version(*cmd: str) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
        for word in out.split():
            if word.startswith("v="):
                return f"Redis {word[2:]}"
    return cmd[0]


if __name__ == "__main__":
    sys.exit(main())
