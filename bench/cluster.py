"""Redis Cluster scale-out: tasks/s against the number of master nodes and of queues.

For each master count (a real cluster of that many `redis-server` processes, no
replicas, made with `redis-cli --cluster create`) and each queue count, N no-op
`async def` tasks are spread over the queues (names picked so the queues spread evenly
over the masters), then worker processes draining all the queues start. The rate is
taken between 10 % and 90 % of the tasks completed (start-up and the tail excluded). Redis CPU per task is
the growth of `used_cpu_sys + used_cpu_user` (INFO cpu) summed over the masters during
the drain, divided by N; the busiest node's CPU share (its CPU seconds / wall seconds)
shows when a node saturates.

    .venv/bin/python bench/cluster.py                          # 1,2,3 masters x 1,2,4,8 queues
    .venv/bin/python bench/cluster.py --masters 1,3 --queues 1,8 --tasks 5000 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.servers import redis_cluster  # noqa: E402


def spread_queues(client: redis.cluster.RedisCluster, count: int) -> list[str]:
    """`count` queue names, round-robin over the masters (by their slot's owner)."""
    from ebbtide.brokers.redis.keys import Layout

    layout = Layout("ebbtide", clustered=True)
    masters = sorted(n.name for n in client.get_primaries())
    by_node: dict[str, list[str]] = {m: [] for m in masters}
    i = 0
    while sum(len(v) for v in by_node.values()) < count * len(masters):
        name = f"q{i}"
        i += 1
        node = client.get_node_from_key(layout.queue_base(name)).name
        if len(by_node[node]) < count:
            by_node[node].append(name)
    picked = []
    for k in range(count):
        picked.append(by_node[masters[k % len(masters)]][k // len(masters)])
    return picked


def cpu_seconds(client: redis.cluster.RedisCluster) -> dict[str, float]:
    out = {}
    for node in client.get_primaries():
        info = client.get_redis_connection(node).info("cpu")
        out[node.name] = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    return out


def completed(broker, queues: list[str]) -> int:
    stats = broker.stats(queues, 90_000)
    return sum(q.completed_total for q in stats.queues.values())


def one_run(url: str, masters: int, nqueues: int, tasks: int, workers: int, log: str) -> dict:
    import ebbtide
    from ebbtide.brokers.redis.broker import RedisBroker

    client = redis.cluster.RedisCluster.from_url(
        url.replace("redis+cluster", "redis").split(",")[0]
    )
    client.flushall()
    queues = spread_queues(client, nqueues)
    app = ebbtide.App(broker_url=url)
    task = app.task(name="bench.nothing")(lambda: None)
    per = tasks // nqueues
    for q in queues:
        task.options(queue=q).send_many([()] * per)
    app.close()
    total = per * nqueues
    broker = RedisBroker(url)
    env = {**os.environ, "BENCH_BROKER_URL": url, "PYTHONPATH": str(BENCH)}
    argv = [sys.executable, "-m", "ebbtide", "--log-level", "WARNING", "worker",
            "anchors.cluster_app:app", "--queues", ",".join(queues), "--concurrency", "64"]  # fmt: skip
    procs = []
    with open(log, "ab") as out:
        for _ in range(workers):
            procs.append(subprocess.Popen(argv, env=env, cwd=BENCH, stdout=out, stderr=out))
    try:
        marks: dict[str, tuple[float, int, dict[str, float]]] = {}
        deadline = time.monotonic() + 300
        while True:
            done = completed(broker, queues)
            now = time.perf_counter()
            for name, share in (("from", 0.1), ("to", 0.9)):
                if name not in marks and done >= share * total:
                    marks[name] = (now, done, cpu_seconds(client))
            if done >= total:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{done}/{total} done after 300 s")
            time.sleep(0.05)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        broker.close()
        client.close()
    (t0, d0, cpu0), (t1, d1, cpu1) = marks["from"], marks["to"]
    wall, ran = t1 - t0, d1 - d0
    cpu = {n: cpu1[n] - cpu0[n] for n in cpu1}
    return {
        "masters": masters,
        "queues": nqueues,
        "tasks": total,
        "tasks_per_s": round(ran / wall) if wall > 0 else None,
        "redis_cpu_us_per_task": round(sum(cpu.values()) / ran * 1e6, 1) if ran else None,
        "busiest_node_cpu_share": round(max(cpu.values()) / wall, 2) if wall > 0 else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--masters", default="1,2,3")
    p.add_argument("--queues", default="1,2,4,8")
    p.add_argument("--tasks", type=int, default=48_000)
    p.add_argument("--workers", type=int, default=2, help="worker processes (2 cores here)")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    rows = []
    log = tempfile.NamedTemporaryFile(prefix="ebbtide-bench-cluster-", suffix=".log", delete=False)
    log.close()
    for masters in (int(m) for m in args.masters.split(",")):
        with redis_cluster(masters=masters, replicas=0) as cluster:
            for nq in (int(q) for q in args.queues.split(",")):
                row = one_run(cluster.url, masters, nq, args.tasks, args.workers, log.name)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print("| masters | queues | tasks/s | Redis CPU µs/task | busiest node CPU share |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['masters']} | {r['queues']} | {r['tasks_per_s']} | "
              f"{r['redis_cpu_us_per_task']} | {r['busiest_node_cpu_share']} |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    with contextlib.suppress(OSError):
        os.unlink(log.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
