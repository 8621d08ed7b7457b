"""Are 200 (or 1,000) TaskQueues' ticks on time on one operator?

Runs N TaskQueue poll loops (`tick.run_periodically` + `TaskQueueTicker.tick`, exactly
what the kopf daemon runs, broker wake-ups included) on one event loop against one real redis-server with real
backlogs, plus some TaskQueues whose broker is hung (accepts, never answers) or down
(connection refused). Kubernetes is a real kube-apiserver + etcd started for the run
(tests/support/apiserver.py: no controller-manager, no node), reached through the
operator's own `KubeCluster` with its watch-fed Deployment cache, as the operator runs.
Reports how late each tick started versus its schedule, and how long after a burst lands
on an idle TaskQueue its worker Deployment is scaled up (with push: well under a second;
with --no-push: up to one poll).

    .venv/bin/python bench/operator_ticks.py [--taskqueues 200] [--poll 1] [--seconds 30] \
        [--hung 10] [--down 10] [--no-push] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # e2e/, and tests/support

import ebbtide  # noqa: E402
from ebbtide_operator import gc_pacing, provision  # noqa: E402
from ebbtide_operator.broker_io import BrokerReader  # noqa: E402
from ebbtide_operator.deployment_cache import DeploymentCache  # noqa: E402
from ebbtide_operator.metrics import OperatorMetrics  # noqa: E402
from ebbtide_operator.spec import parse_spec  # noqa: E402
from ebbtide_operator.tick import TaskQueueTicker, phase, run_periodically  # noqa: E402
from ebbtide_operator.wake import WakeHub  # noqa: E402
from ebbtide_operator.write_budget import DEFAULT_PER_SECOND, WriteBudget  # noqa: E402
from support.apiserver import (  # noqa: E402
    ApiServer,
    Namespace,
    RecordingCluster,
    control_plane,
    watched_deployments,
)
from support.servers import free_port, redis_server  # noqa: E402

NS = "bench"


def body(i: int, poll: int) -> dict:
    name = f"tq{i:03d}"
    return {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "TaskQueue",
        "metadata": {"name": name},
        "spec": {
            "broker": {"type": "redis", "external": {"secretRef": {"name": f"{name}-url"}}},
            "queues": [{"name": f"q{i:03d}"}],
            "worker": {"image": "w", "app": "m:app", "concurrency": 4},
            "scaling": {"minReplicas": 0, "maxReplicas": 20, "pollSeconds": poll},
        },
    }


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "count": len(values),
        "p50_ms": round(pct(values, 0.50) * 1000, 2),
        "p99_ms": round(pct(values, 0.99) * 1000, 2),
        "max_ms": round(max(values, default=float("nan")) * 1000, 2),
        "mean_ms": round(statistics.fmean(values) * 1000, 2) if values else float("nan"),
    }


async def run(
    args: argparse.Namespace, server: ApiServer, url: str, hung_url: str, down_url: str
) -> dict:
    client = server.api_client(pool=4)
    ns = await asyncio.to_thread(Namespace, client, NS)
    async with watched_deployments(client, NS, DeploymentCache()) as cache:
        cluster = RecordingCluster(server.api_client(), deployments=cache)
        # As main.py: replica writes on API threads (and connections) of their own.
        scaler = RecordingCluster(server.api_client(pool=4), deployments=cache)
        try:
            result = await measure(args, cluster, scaler, ns, url, hung_url, down_url)
            result["deployments_seen_on_the_watch"] = len(cache)
            return result
        finally:
            cluster.close()
            scaler.close()
            client.close()


async def measure(
    args: argparse.Namespace,
    cluster: RecordingCluster,
    scaler: RecordingCluster,
    ns: Namespace,
    url: str,
    hung_url: str,
    down_url: str,
) -> dict:
    reader = BrokerReader()
    hub = WakeHub()
    metrics = OperatorMetrics()
    budget = WriteBudget(args.status_writes_per_second or None)
    write_slots = asyncio.Semaphore(8)  # as main.py: half of KubeCluster's 16 threads
    lateness: dict[str, list[float]] = {"healthy": [], "hung": [], "down": []}
    durations: dict[str, list[float]] = {"healthy": [], "hung": [], "down": []}
    skipped: list[int] = []  # slots lost to overrunning ticks
    # Figures count from the end of the warm-up: the first polls read every Secret and
    # write every status at once (a start-up storm, reported apart).
    measuring: list[bool] = []
    stop_at = float("inf")  # set once every TaskQueue is stored and provisioned
    loops = []
    for i in range(args.taskqueues):
        b = await asyncio.to_thread(ns.create_taskqueue, body(i, args.poll))
        kind = "hung" if i < args.hung else "down" if i < args.hung + args.down else "healthy"
        await asyncio.to_thread(
            ns.add_secret,
            f"{b['metadata']['name']}-url",
            {"url": {"hung": hung_url, "down": down_url}.get(kind, url)},
        )
        await provision.reconcile(cluster, b, parse_spec(b["spec"]))
        ticker = TaskQueueTicker(
            cluster,
            reader,
            metrics,
            cluster.record_event,
            budget=budget,
            scaler=scaler,
            write_slots=write_slots,
        )
        wake = asyncio.Event()
        last: list = []

        def woken(wake=wake, last=last) -> None:  # as main.poll: only with no ready worker
            if not last or last[-1].ready == 0:
                wake.set()

        urgent = [False]  # as main.poll: a woken tick's API calls take the scaler's threads

        async def step(ticker=ticker, b=b, kind=kind, woken=woken, last=last, urgent=urgent):
            now_urgent, urgent[0] = urgent[0], False
            outcome = await ticker.tick(b, urgent=now_urgent)
            last[:] = [outcome]
            if measuring:
                durations[kind].append(outcome.seconds)
            if ticker.memory.url and args.push:
                key, queues = b["metadata"]["name"], [q["name"] for q in b["spec"]["queues"]]
                hub.watch(key, ticker.memory.url, "ebbtide", queues, woken)

        loops.append(
            run_periodically(
                step,
                interval=lambda: args.poll,
                sleep=asyncio.sleep,
                stopped=lambda: time.monotonic() >= stop_at,
                lateness=lambda late, kind=kind: measuring and lateness[kind].append(late),
                skipped=lambda n: measuring and skipped.append(n),
                initial_delay=phase(b["metadata"]["uid"], args.poll),
                wake=wake,
                woken=lambda urgent=urgent: urgent.__setitem__(0, True),
            )
        )
    scaled_at: dict[str, list[float]] = {}
    scale = scaler.scale_deployment

    async def timed_scale(
        namespace: str, name: str, replicas: int, resource_version: str | None = None
    ) -> str | None:
        scaled_at.setdefault(name, []).append(time.monotonic())
        return await scale(namespace, name, replicas, resource_version)

    scaler.scale_deployment = timed_scale
    loops_started = time.monotonic()
    baseline: dict[str, float] = {}

    async def warm_up() -> None:
        nonlocal stop_at
        await asyncio.sleep(args.warmup)
        measuring.append(True)
        baseline.update(
            started=time.monotonic(),
            cpu=time.process_time(),
            writes=cluster.status_writes + scaler.status_writes,
            deferred=budget.deferred,
        )
        stop_at = baseline["started"] + args.seconds

    bursts = await_bursts(args, loops_started + args.warmup)
    collector = asyncio.ensure_future(gc_pacing.run())  # as main.startup
    try:
        await asyncio.gather(warm_up(), *loops, *bursts.values())
    finally:
        collector.cancel()
    started = baseline["started"]
    elapsed = time.monotonic() - started
    cpu = time.process_time() - baseline["cpu"]
    status_writes = cluster.status_writes + scaler.status_writes - baseline["writes"]
    reactions = []
    for name, task in bursts.items():
        started, landed = task.result()
        after = [t for t in scaled_at.get(f"{name}-worker", []) if t >= started]
        if after:  # a scale-up while the burst was still landing counts as 0
            reactions.append(max(0.0, after[0] - landed))
    hub.close()
    reader.close()
    scaled = sum(1 for e in cluster.events if e[1].startswith("Scaled"))  # every ticker's sink
    expected = args.taskqueues * args.seconds / args.poll
    ticks = sum(len(v) for v in durations.values())
    return {
        "taskqueues": args.taskqueues,
        "poll_seconds": args.poll,
        "seconds": round(elapsed, 1),
        "ticks": ticks,
        "ticks_expected": int(expected),
        "scale_events": scaled,
        "warmup_seconds": args.warmup,
        "status_writes": status_writes,
        "status_writes_deferred": budget.deferred - baseline["deferred"],
        # The whole bench process: the ticks, and the test harness's own Deployment watch.
        "process_cpu_seconds": round(cpu, 1),
        "process_cpu_ms_per_taskqueue_per_minute": round(
            cpu / args.taskqueues / (elapsed / 60) * 1000, 1
        ),
        "process_rss_mib": round(rss_bytes() / 2**20, 1),
        "lateness": {k: summary(v) for k, v in lateness.items() if v},
        "tick_duration": {k: summary(v) for k, v in durations.items() if v},
        "late_over_half_poll": sum(1 for v in lateness.values() for x in v if x > args.poll / 2),
        "healthy_late_over_half_second": sum(1 for x in lateness["healthy"] if x > 0.5),
        "slots_skipped": sum(skipped),
        "burst_reaction": summary(reactions),
        "bursts_without_reaction": len(bursts) - len(reactions),
    }


def await_bursts(args: argparse.Namespace, measure_from: float) -> dict[str, asyncio.Task]:
    """Bursts of tasks land on idle TaskQueues (0 replicas) at random moments; each task
    resolves to (started, landed): when its enqueue began and when all of it was in Redis.
    Reaction is measured from `landed`, so a slow enqueue under load is not counted."""
    rng = random.Random(7)
    idle = [i for i in range(args.hung + args.down, args.taskqueues) if i % 3 == 0][: args.bursts]

    async def burst(i: int) -> float:
        at = rng.uniform(args.poll, max(2 * args.poll, args.seconds - 2 * args.poll))
        await asyncio.sleep(max(0.0, measure_from + at - time.monotonic()))
        started = time.monotonic()
        await asyncio.to_thread(BURST_APP.send, i, args.burst_size)
        return started, time.monotonic()

    return {f"tq{i:03d}": asyncio.ensure_future(burst(i)) for i in idle}


class _BurstApp:
    url = ""

    def send(self, i: int, count: int) -> None:
        app = ebbtide.App(broker_url=self.url)
        task = app.task(name="noop")(lambda: None)
        task.options(queue=f"q{i:03d}").send_many(() for _ in range(count))
        app.close()


BURST_APP = _BurstApp()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--taskqueues", type=int, default=200)
    parser.add_argument(
        "--poll", type=int, default=1, help="pollSeconds: whole seconds, as the CRD takes"
    )
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--hung", type=int, default=10, help="TaskQueues whose broker never answers"
    )
    parser.add_argument(
        "--down", type=int, default=10, help="TaskQueues whose broker refuses connections"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds of ticking before the figures count (default: two polls)",
    )
    parser.add_argument("--tasks-per-queue", type=int, default=500)
    parser.add_argument(
        "--bursts", type=int, default=20, help="bursts on idle TaskQueues, for reaction time"
    )
    parser.add_argument("--burst-size", type=int, default=200)
    parser.add_argument(
        "--no-push",
        dest="push",
        action="store_false",
        help="no broker wake-ups: activation waits for the next poll (the old behaviour)",
    )
    parser.add_argument(
        "--status-writes-per-second",
        type=float,
        default=DEFAULT_PER_SECOND,
        help="the routine status write budget, as EBBTIDE_STATUS_WRITES_PER_SECOND (0: none)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.warmup is None:
        args.warmup = 2.0 * args.poll

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(512)
    hung_url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
    down_url = f"redis://127.0.0.1:{free_port()}/0"
    try:
        with redis_server() as url:
            app = ebbtide.App(broker_url=url)

            @app.task(name="noop")
            def noop() -> None: ...

            for i in range(args.taskqueues):
                noop.options(queue=f"q{i:03d}").send_many(
                    () for _ in range(args.tasks_per_queue * (i % 3))
                )
            app.close()
            BURST_APP.url = url
            with (
                tempfile.TemporaryDirectory() as root,
                control_plane(Path(root)) as server,
            ):
                result = asyncio.run(run(args, server, url, hung_url, down_url))
    finally:
        silent.close()
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{result['taskqueues']} TaskQueues, poll {result['poll_seconds']}s, {result['seconds']}s "
        f"after a {result['warmup_seconds']:g}s warm-up: "
        f"{result['ticks']} ticks (expected ~{result['ticks_expected']}), "
        f"{result['scale_events']} scale events, {result['status_writes']} status writes "
        f"({result['status_writes_deferred']} routine ones deferred)"
    )
    print(
        f"  bench process: {result['process_cpu_seconds']}s CPU, "
        f"{result['process_cpu_ms_per_taskqueue_per_minute']} ms per TaskQueue per minute, "
        f"RSS {result['process_rss_mib']} MiB; load average {os.getloadavg()[0]:.1f}"
    )
    for kind, s in result["lateness"].items():
        d = result["tick_duration"][kind]
        print(
            f"  {kind:8s} n={s['count']:6d}  lateness p50 {s['p50_ms']:7.2f} ms  p99 {s['p99_ms']:7.2f} ms"
            f"  max {s['max_ms']:7.2f} ms | tick p50 {d['p50_ms']:7.2f} ms  p99 {d['p99_ms']:7.2f} ms"
        )
    print(
        f"  ticks started later than half a poll: {result['late_over_half_poll']}; healthy ones "
        f"later than 0.5 s: {result['healthy_late_over_half_second']}; slots skipped by "
        f"overrunning ticks: {result['slots_skipped']}"
    )
    r = result["burst_reaction"]
    print(
        f"  burst -> scale-up reaction (n={r['count']}): p50 {r['p50_ms']:.0f} ms  p99 {r['p99_ms']:.0f} ms"
        f"  max {r['max_ms']:.0f} ms (poll {result['poll_seconds']}s); no reaction: {result['bursts_without_reaction']}"
    )


if __name__ == "__main__":
    main()
