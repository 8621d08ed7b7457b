"""Redis Cluster scale-out: one sharded queue's tasks/s against the number of master nodes.

For each master count M (a real cluster of M `redis-server` processes, no replicas, made
with `redis-cli --cluster create`) one logical queue of K shards (--shards, default 6, so
it spreads evenly over 1, 2, 3 and 6 masters; 0 = one shard per master) gets N no-op
`async def` tasks, round-robin over its shards; its name is picked so that the shards
(one slot each) spread evenly over the masters. Then worker processes draining the queue
start. The rate is taken between 10 % and 90 % of the tasks completed (start-up and the
tail excluded).

On a 2-core machine the Python workers, not Redis, are the limit, so tasks/s cannot grow
with nodes there. To show the scale-out anyway each node is CPU-capped (--node-cpu, in
cores; the cgroup v1 cpu controller, bench/cpucap.py): capped nodes saturate before the
workers do, as a cluster's nodes would against a large worker fleet, and tasks/s grows
with M until the workers are the limit. `--node-cpu 0.05,0` runs every M capped, then
uncapped (0) on the same cluster. Only the drain is capped, not the sending.

Redis CPU per task is the growth of `used_cpu_sys + used_cpu_user` (INFO cpu) summed over
the masters during the window, divided by the tasks completed in it. The busiest node's
CPU share (CPU seconds / wall seconds) against its cap, and the share of the window's CFS
periods in which it hit the cap, show whether the nodes saturate; the workers' CPU and
how many of their threads waited for a CPU on average (schedstat) show when the cores
are the limit instead.

    .venv/bin/python bench/cluster.py                      # 1,2,3,6 masters, capped and not
    .venv/bin/python bench/cluster.py --masters 1,3 --node-cpu 0 --tasks 50000 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(BENCH))

from cpucap import CpuCap, CpuCapError, Throttling, cpu_capped, find_controller  # noqa: E402
from support.servers import RedisClusterInfo, redis_cluster  # noqa: E402

TASK = "bench.nothing"  # bench/anchors/cluster_app.py
DRAIN_TIMEOUT = 300.0
POLL_S = 0.2  # the stats script runs on every node: poll too often and it is the load


# -- pure decisions ------------------------------------------------------------------------


def evenly_spread(owners: Sequence[str], masters: Sequence[str]) -> bool:
    """True when the shards' owners differ in count by at most one over all the masters
    (so every master holds a shard when there are at least as many shards as masters)."""
    counts = [list(owners).count(m) for m in masters]
    return max(counts) - min(counts) <= 1


def pick_sharded_queue(
    shards: int, masters: Sequence[str], owner: Callable[[str], str], tries: int = 100_000
) -> str:
    """The first name `q<i>` whose `shards` shards spread evenly over `masters`;
    `owner(queue)` is the master a broker queue's slot belongs to. A shard's slot follows
    from its name alone, so only the logical name can be chosen."""
    from ebbtide.shards import shard_names

    for i in range(tries):
        name = f"q{i}"
        if evenly_spread([owner(s) for s in shard_names(name, shards)], masters):
            return name
    raise RuntimeError(
        f"no name q0..q{tries - 1} spreads {shards} shards evenly over {len(masters)} masters "
        "(an even spread over many nodes is rare: past about 8 none may turn up)"
    )


@dataclass(frozen=True)
class Row:
    masters: int
    shards: int
    node_cpu: float  # the cap per node, in cores; 0 = uncapped
    tasks: int
    tasks_per_s: float
    redis_cpu_us_per_task: float
    busiest_node_cpu_share: float  # cores
    busiest_node_throttled: float | None  # share of the window's CFS periods that hit the cap
    workers_cpu: float  # cores, all worker processes together
    workers_waiting: float  # of their threads, how many waited for a CPU, on average
    node_cpu_shares: tuple[float, ...] = ()  # every master's, busiest first
    script_calls_per_task: float = 0.0  # EVAL/EVALSHA calls, all masters, per task
    vs_one_master: float | None = None


def with_ratios(rows: Sequence[Row]) -> list[Row]:
    """Each row's tasks/s over the 1-master row's of the same cap (None without one)."""
    base = {r.node_cpu: r.tasks_per_s for r in rows if r.masters == 1}
    out = []
    for r in rows:
        one = base.get(r.node_cpu)
        ratio = round(r.tasks_per_s / one, 2) if one else None
        out.append(Row(**{**asdict(r), "vs_one_master": ratio}))
    return out


def render_table(rows: Sequence[Row]) -> str:
    head = ("| masters | shards | node CPU cap | tasks/s | Redis CPU µs/task | busiest node CPU "
            "(throttled periods) | workers' CPU (waiting for one) | vs 1 master |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    lines = [head]
    for r in rows:
        cap = f"{r.node_cpu:g} core" if r.node_cpu else "none"
        busy = f"{r.busiest_node_cpu_share:.3f}"
        if r.busiest_node_throttled is not None:
            busy += f" ({r.busiest_node_throttled:.0%})"
        ratio = f"{r.vs_one_master:.2f}×" if r.vs_one_master is not None else ""
        lines.append(f"| {r.masters} | {r.shards} | {cap} | {r.tasks_per_s:,.0f} | "
                     f"{r.redis_cpu_us_per_task:.1f} | {busy} | {r.workers_cpu:.2f} ({r.workers_waiting:.2f}) | {ratio} |")  # fmt: skip
    return "\n".join(lines)


# -- measuring -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Mark:
    """One instant of the drain: the clock, tasks done, and every counter we difference."""

    at: float
    done: int
    redis_cpu: dict[str, float]  # node name -> CPU seconds
    script_calls: int  # EVAL/EVALSHA, all masters
    throttling: dict[str, Throttling]
    workers: tuple[float, float]  # the workers' CPU and run-queue wait, seconds


def redis_cpu_seconds(client: redis.cluster.RedisCluster) -> dict[str, float]:
    out = {}
    for node in client.get_primaries():
        info = client.get_redis_connection(node).info("cpu")
        out[node.name] = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    return out


SCRIPT_COMMANDS = ("cmdstat_eval", "cmdstat_evalsha", "cmdstat_eval_ro", "cmdstat_evalsha_ro")


def script_calls(client: redis.cluster.RedisCluster) -> int:
    """Script calls served by all the masters so far: the runtime's claims, settles and
    heartbeats are scripts, so calls per task show what a shard count costs each node."""
    total = 0
    for node in client.get_primaries():
        stats = client.get_redis_connection(node).info("commandstats")
        total += sum(int(stats[c]["calls"]) for c in SCRIPT_COMMANDS if c in stats)
    return total


def process_times(pids: Sequence[int]) -> tuple[float, float]:
    """(CPU seconds, seconds spent runnable but waiting for a CPU) of the processes'
    threads (/proc/<pid>/task/*/schedstat): the wait shows when the cores are the limit."""
    cpu = wait = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):  # a thread that just exited
                ran, waited, _ = (task / "schedstat").read_text().split()
                cpu, wait = cpu + int(ran), wait + int(waited)
    return cpu / 1e9, wait / 1e9


@contextlib.contextmanager
def capped_nodes(cluster: RedisClusterInfo, cores: float) -> Iterator[dict[str, CpuCap]]:
    """Every node of `cluster` under a `cores` cap while inside ({} when cores is 0);
    each cap is lifted on the way out, in reverse, even if the drain failed."""
    with contextlib.ExitStack() as stack:
        caps = {}
        if cores:
            for node in cluster.nodes:
                assert node.proc is not None
                cap = cpu_capped(node.proc.pid, cores, str(node.port))
                caps[f"127.0.0.1:{node.port}"] = stack.enter_context(cap)
        yield caps


@contextlib.contextmanager
def workers(url: str, queue: str, shards: int, args: argparse.Namespace) -> Iterator[list[int]]:
    """`args.workers` processes draining `queue`'s `shards` shards; stopped on exit."""
    env = {**os.environ, "BENCH_BROKER_URL": url, "EBBTIDE_SHARDS": f"{queue}={shards}",
           "PYTHONPATH": str(BENCH) + os.pathsep + os.environ.get("PYTHONPATH", "")}  # fmt: skip
    argv = [sys.executable, "-m", "ebbtide", "--log-level", "WARNING", "worker",
            "anchors.cluster_app:app", "--queues", queue, "--concurrency", str(args.concurrency)]  # fmt: skip
    procs: list[subprocess.Popen] = []
    try:
        with open(args.log, "ab") as out:
            for _ in range(args.workers):
                procs.append(subprocess.Popen(argv, env=env, cwd=BENCH, stdout=out, stderr=out))
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def drain(
    broker, client, names: list[str], total: int, caps: dict[str, CpuCap], pids: list[int]
) -> tuple[Mark, Mark]:
    """Poll until every task is done; the marks at 10 % and 90 % of them."""

    def mark(done: int) -> Mark:
        throttling = {n: c.throttling() for n, c in caps.items()}
        return Mark(time.perf_counter(), done, redis_cpu_seconds(client), script_calls(client),
                    throttling, process_times(pids))  # fmt: skip

    marks: dict[float, Mark] = {}
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while True:
        stats = broker.stats(names, 90_000)
        done = sum(q.completed_total for q in stats.queues.values())
        for share in (0.1, 0.9):
            if share not in marks and done >= share * total:
                marks[share] = mark(done)
        if done >= total:
            return marks[0.1], marks[0.9]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{done}/{total} done after {DRAIN_TIMEOUT:.0f} s")
        time.sleep(POLL_S)


def to_row(
    masters: int, shards: int, cores: float, total: int, caps: dict[str, CpuCap], a: Mark, b: Mark
) -> Row:
    wall, ran = b.at - a.at, b.done - a.done
    cpu = {n: b.redis_cpu[n] - a.redis_cpu[n] for n in b.redis_cpu}
    busiest = max(cpu, key=cpu.__getitem__)
    throttled = None
    if busiest in caps:
        t = b.throttling[busiest] - a.throttling[busiest]
        periods = wall * 1e6 / caps[busiest].period_us
        throttled = round(min(1.0, t.throttled / periods), 2)
    return Row(
        masters=masters,
        shards=shards,
        node_cpu=cores,
        tasks=total,
        tasks_per_s=round(ran / wall),
        redis_cpu_us_per_task=round(sum(cpu.values()) / ran * 1e6, 1),
        busiest_node_cpu_share=round(cpu[busiest] / wall, 3),
        busiest_node_throttled=throttled,
        workers_cpu=round((b.workers[0] - a.workers[0]) / wall, 2),
        workers_waiting=round((b.workers[1] - a.workers[1]) / wall, 2),
        script_calls_per_task=round((b.script_calls - a.script_calls) / ran, 3),
        node_cpu_shares=tuple(sorted((round(c / wall, 3) for c in cpu.values()), reverse=True)),
    )


def one_run(
    cluster: RedisClusterInfo, masters: int, shards: int, cores: float, args: argparse.Namespace
) -> Row:
    """Send the tasks (uncapped: sending is not what is measured), then drain them with
    every node under the cap."""
    import ebbtide
    from ebbtide.brokers.redis.broker import RedisBroker
    from ebbtide.brokers.redis.keys import Layout
    from ebbtide.shards import shard_names

    first = cluster.url.replace("redis+cluster", "redis").split(",")[0]
    client = redis.cluster.RedisCluster.from_url(first)
    broker = RedisBroker(cluster.url)
    try:
        client.flushall()
        layout = Layout("ebbtide", clustered=True)
        masters_names = sorted(n.name for n in client.get_primaries())
        owner = lambda q: client.get_node_from_key(layout.queue_base(q)).name  # noqa: E731
        queue = pick_sharded_queue(shards, masters_names, owner)
        app = ebbtide.App(broker_url=cluster.url, shards={queue: shards})
        app.task(name=TASK, queue=queue)(lambda: None).send_many([()] * args.tasks)
        app.close()
        with capped_nodes(cluster, cores) as caps:
            with workers(cluster.url, queue, shards, args) as pids:
                a, b = drain(broker, client, shard_names(queue, shards), args.tasks, caps, pids)
    finally:
        broker.close()
        client.close()
    return to_row(masters, shards, cores, args.tasks, caps, a, b)


def parse_list(text: str, kind: type) -> list:
    return [kind(x) for x in text.split(",") if x.strip()]


def measure(args: argparse.Namespace, caps: list[float]) -> list[Row]:
    """Every row: a cluster per master count, each cap run on the same cluster."""
    log = tempfile.NamedTemporaryFile(prefix="ebbtide-bench-cluster-", suffix=".log", delete=False)
    log.close()
    args.log = log.name
    rows = []
    try:
        print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.tasks} tasks, "
              f"{args.workers} workers x --concurrency {args.concurrency}, load average "
              f"{os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
        for masters in parse_list(args.masters, int):
            with redis_cluster(masters=masters, replicas=0) as cluster:
                for cores in caps:
                    row = one_run(cluster, masters, args.shards or masters, cores, args)
                    rows.append(row)
                    print(json.dumps(asdict(row)), flush=True)
    except BaseException:
        print(f"bench/cluster.py: the workers' log is {log.name}", file=sys.stderr)
        raise
    os.unlink(log.name)
    return with_ratios(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--masters", default="1,2,3,6", help="master counts, one cluster each")
    p.add_argument("--shards", type=int, default=6,
                   help="shards of the queue (6: even over 1, 2, 3 and 6 masters; 0: one per master)")  # fmt: skip
    p.add_argument("--node-cpu", default="0.05,0",
                   help="CPU cap per Redis node in cores, comma-separated; 0 = uncapped")  # fmt: skip
    p.add_argument("--tasks", type=int, default=30_000)
    p.add_argument("--workers", type=int, default=8,
                   help="worker processes: each has one claim in flight, so the fleet needs "
                   "several to keep capped nodes busy")  # fmt: skip
    p.add_argument("--concurrency", type=int, default=128, help="each worker's --concurrency")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    caps = parse_list(args.node_cpu, float)
    # A plain SIGTERM would skip the `finally`s: the caps would stay and the nodes run on.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench/cluster.py: terminated"))
    try:
        if any(caps):
            find_controller()  # fail before any cluster starts, saying what is missing
        rows = measure(args, caps)
    except CpuCapError as exc:
        raise SystemExit(f"bench/cluster.py: {exc}") from None
    print(f"# load average {os.getloadavg()[0]:.1f} at the end\n")
    print(render_table(sorted(rows, key=lambda r: (-r.node_cpu, r.masters))))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
