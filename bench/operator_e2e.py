"""The real operator on the real API server: are 200 TaskQueues' ticks on time, and how
fast does a burst on an idle TaskQueue scale its workers up?

Brings up the local control plane (e2e/controlplane.py; reuses a running one), installs the
chart, starts `kopf run -m ebbtide_operator.main` as the chart's ServiceAccount, and creates
N TaskQueues on one real redis-server (minReplicas 0, so no pods are needed). Then, over
`--seconds`:

- **tick lateness** comes from the operator's own `ebbtide_operator_tick_lateness_seconds` histogram
  (scraped before and after), next to the number of ticks expected from N / poll;
- **activation**: bursts land on idle TaskQueues (0 replicas) at random moments; a watch
  on Deployments times each one from the moment its send *starts* (conservative: the
  enqueue itself is counted) to the first `spec.replicas` > 0 written by the operator.
  The enqueue script's wake-up (wake.py) starts the tick at once, so the target is
  p99 < 1 s whatever the poll; without push it would be up to one poll;
- **cost**: the operator process's CPU seconds (utime + stime) over the window and its
  resident memory at the end, per TaskQueue, and the machine's load average meanwhile.

`--own-apiserver` runs it on an etcd + kube-apiserver of its own (tests/support/apiserver.py:
no controller-manager, no node, the operator as admin, no chart) instead of the shared
control plane; that one needs no `flock /tmp/ebbtide-node.lock`.

    .venv/bin/python bench/operator_e2e.py [--taskqueues 200] [--poll 5] [--seconds 60] \
        [--bursts 60] [--own-apiserver] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import ebbtide  # noqa: E402
from support.apiserver import control_plane  # noqa: E402
from support.servers import redis_server  # noqa: E402

from e2e.controlplane import ControlPlane  # noqa: E402
from e2e.tests.support import (  # noqa: E402
    OperatorProcess,
    install_chart,
    recreate_namespace,
    service_account_kubeconfig,
    wait_for,
)

NS = "bench-operator"
LATENESS = "ebbtide_operator_tick_lateness_seconds"
DURATION = "ebbtide_operator_tick_duration_seconds"
SKIPPED = "ebbtide_operator_tick_slots_skipped_total"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LAST_HANDLED = "kopf.zalando.org/last-handled-configuration"


def taskqueue(i: int, poll: float) -> dict:
    return {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "TaskQueue",
        "metadata": {"name": f"tq{i:03d}"},
        "spec": {
            "broker": {"type": "redis", "external": {"secretRef": {"name": "broker"}}},
            "queues": [{"name": f"q{i:03d}"}],
            "worker": {"image": "ebbtide/runtime:bench", "app": "m:app", "concurrency": 4},
            "scaling": {
                "minReplicas": 0,
                "maxReplicas": 20,
                "pollSeconds": poll,
                "initialTaskSeconds": 0.1,
            },
        },
    }


def scrape(metrics_port: int) -> dict[str, dict[str, float]]:
    """Cumulative bucket counts of every histogram (name -> le -> count), summed over label
    sets, and every unlabelled counter (name -> {"": value}), from one scrape of the
    operator's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    histograms: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.type == "counter":
            for sample in family.samples:
                if sample.name.endswith("_total") and not sample.labels:
                    histograms[sample.name] = {"": sample.value}
        if family.type != "histogram":
            continue
        buckets = histograms.setdefault(family.name, {})
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                le = sample.labels["le"]
                buckets[le] = buckets.get(le, 0.0) + sample.value
    return histograms


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class LoadSampler(threading.Thread):
    """The machine's 1-minute load average every 5 s of the window (what else ran)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self.stop.wait(5.0):
                return


def bucket_shares(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Over the window: how many observations, and the share at or below each bucket."""
    delta = {le: after.get(le, 0.0) - before.get(le, 0.0) for le in after}
    total = delta.get("+Inf", 0.0)
    share = {le: (count / total if total else float("nan")) for le, count in delta.items()}
    return {"ticks": total, **{f"share_le_{le}s": round(v, 4) for le, v in share.items()}}


def watch_scale_ups(
    apps, landed: dict[str, float], reactions: dict[str, float], stop: threading.Event
) -> None:
    """Record, per burst TaskQueue, seconds from its burst landing to replicas > 0."""
    from kubernetes import watch

    while not stop.is_set():
        stream = watch.Watch()
        for event in stream.stream(apps.list_namespaced_deployment, NS, timeout_seconds=5):
            deployment = event["object"]
            name = deployment.metadata.name.removesuffix("-worker")
            if name in landed and name not in reactions and (deployment.spec.replicas or 0) > 0:
                reactions[name] = time.monotonic() - landed[name]
            if stop.is_set():
                stream.stop()
                break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--taskqueues", type=int, default=200)
    parser.add_argument("--poll", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--bursts", type=int, default=60)
    parser.add_argument("--burst-size", type=int, default=50)
    parser.add_argument(
        "--own-apiserver",
        action="store_true",
        help="an etcd + kube-apiserver of its own (no controller-manager, no chart)",
    )
    parser.add_argument("--settle-seconds", type=float, default=600.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    if args.own_apiserver:
        with tempfile.TemporaryDirectory() as root, control_plane(Path(root)) as server:
            result = on_own_apiserver(args, server.kubeconfig, Path(root))
    else:
        result = on_shared_control_plane(args)
    report(result, args.json)
    return 0


def on_own_apiserver(args: argparse.Namespace, kubeconfig: Path, root: Path) -> dict:
    """The operator as admin on a fresh API server: nothing to clean up but the server."""
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(kubeconfig))
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
    operator = None
    try:
        with redis_server() as url:
            operator, settle = populate_and_start(
                args, api, url, str(kubeconfig), root / "operator"
            )
            return measure(args, url, client.AppsV1Api(api), operator, settle)
    finally:
        if operator is not None:
            operator.stop()


def on_shared_control_plane(args: argparse.Namespace) -> dict:
    from kubernetes import client, config

    plane = ControlPlane(attached=True).up()
    env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig)}
    api = config.new_client_from_config(config_file=str(plane.kubeconfig))
    core = client.CoreV1Api(api)
    operator = None
    try:
        install_chart(str(plane.bin_dir / "helm"), env, operator_replicas=0)
        recreate_namespace(core, NS)
        with redis_server() as url:
            workdir = Path(plane.root) / "bench-operator"
            kubeconfig = service_account_kubeconfig(
                str(plane.kubeconfig), core, workdir / "operator.kubeconfig"
            )
            operator, settle = populate_and_start(args, api, url, kubeconfig, workdir)
            return measure(args, url, client.AppsV1Api(api), operator, settle)
    finally:
        # Delete while the operator still runs: kopf keeps a finalizer on TaskQueues with a
        # daemon, and only a running operator releases it.
        try:
            core.delete_namespace(NS)
            wait_for(
                lambda: NS not in {n.metadata.name for n in core.list_namespace().items},
                180,
                "namespace gone",
            )
        except (client.ApiException, AssertionError) as error:
            print(f"cleanup: {error}", file=sys.stderr)
        if operator is not None:
            operator.stop()
        if plane.started_here:
            plane.down()


def populate_and_start(
    args: argparse.Namespace, api, url: str, kubeconfig: str, workdir: Path
) -> tuple[OperatorProcess, float]:
    """The broker Secret and N TaskQueues, then the operator; returns it, and how long
    until every TaskQueue reported a status (each one's first tick had run)."""
    from kubernetes import client

    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    core.create_namespaced_secret(
        NS, client.V1Secret(metadata=client.V1ObjectMeta(name="broker"), string_data={"url": url})
    )
    for i in range(args.taskqueues):
        custom.create_namespaced_custom_object(
            "ebbtide.dev", "v1alpha1", NS, "taskqueues", taskqueue(i, args.poll)
        )
    operator = OperatorProcess.start(kubeconfig, [NS], workdir, {})

    def all_reporting() -> bool:
        """Every TaskQueue has a status (its first tick ran) and was reconciled (kopf's
        diff-base annotation): the start-up storm is over before the window opens."""
        items = custom.list_namespaced_custom_object("ebbtide.dev", "v1alpha1", NS, "taskqueues")[
            "items"
        ]
        done = [
            tq
            for tq in items
            if tq.get("status", {}).get("conditions")
            and LAST_HANDLED in (tq["metadata"].get("annotations") or {})
        ]
        return len(done) == args.taskqueues

    settle_started = time.monotonic()
    wait_for(
        all_reporting,
        args.settle_seconds,
        f"all {args.taskqueues} TaskQueues reconciled and reporting status",
    )
    settle = time.monotonic() - settle_started
    time.sleep(2 * args.poll)  # a warm-up: two polls of every TaskQueue before the window
    return operator, settle


def measure(
    args: argparse.Namespace, url: str, apps, operator: OperatorProcess, settle: float
) -> dict:
    rng = random.Random(20261123)
    burst_names = [
        f"tq{i:03d}" for i in rng.sample(range(args.taskqueues), min(args.bursts, args.taskqueues))
    ]
    burst_times = sorted(
        rng.uniform(2, max(3.0, args.seconds - 2 * args.poll - 3)) for _ in burst_names
    )
    landed: dict[str, float] = {}
    reactions: dict[str, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(
        target=watch_scale_ups, args=(apps, landed, reactions, stop), daemon=True
    )
    watcher.start()
    app = ebbtide.App(broker_url=url)
    pid = operator.popen.pid
    load = LoadSampler()
    load.start()
    before = scrape(operator.metrics_port)
    cpu_before = cpu_seconds(pid)
    started = time.monotonic()
    for name, at in zip(burst_names, burst_times, strict=True):
        time.sleep(max(0.0, started + at - time.monotonic()))  # pacing the load, not synchronising
        queue = "q" + name.removeprefix("tq")
        task = app.task(name=f"bench.{name}", queue=queue)(lambda: None)
        landed[name] = time.monotonic()  # before the send: the watch may see it first
        task.send_many([()] * args.burst_size)
    time.sleep(max(0.0, started + args.seconds - time.monotonic()))  # the measurement window
    after = scrape(operator.metrics_port)
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(pid) - cpu_before
    rss = rss_bytes(pid)
    load.stop.set()
    load.join(timeout=10)
    stop.set()
    watcher.join(timeout=10)
    app.close()
    values = sorted(reactions.values())
    p99 = values[min(len(values) - 1, int(0.99 * len(values)))] if values else None
    minutes = elapsed / 60
    skipped = after.get(SKIPPED, {}).get("", 0.0) - before.get(SKIPPED, {}).get("", 0.0)
    return {
        "taskqueues": args.taskqueues,
        "poll_seconds": args.poll,
        "window_seconds": round(elapsed, 1),
        "seconds_until_all_reporting": round(settle, 1),
        "ticks_expected": int(args.taskqueues * elapsed / args.poll),
        "slots_skipped": int(skipped),
        "operator": {
            "cpu_seconds": round(cpu, 1),
            "cpu_share_of_one_core": round(cpu / elapsed, 3),
            "cpu_ms_per_taskqueue_per_minute": round(cpu / args.taskqueues / minutes * 1000, 1),
            "rss_mib": round(rss / 2**20, 1),
            "rss_kib_per_taskqueue": round(rss / 1024 / args.taskqueues, 1),
        },
        "load_average_1m": {
            "mean": round(statistics.fmean(load.samples), 2) if load.samples else None,
            "max": round(max(load.samples), 2) if load.samples else None,
        },
        "lateness": bucket_shares(before[LATENESS], after[LATENESS]),
        "tick_duration": bucket_shares(before[DURATION], after[DURATION]),
        "reaction_seconds": {
            "count": len(values),
            "missed": len(landed) - len(values),
            "p50": round(statistics.median(values), 3) if values else None,
            "p99": round(p99, 3) if p99 is not None else None,
            "max": round(values[-1], 3) if values else None,
            "target": 1.0,
            "within_target": sum(1 for v in values if v <= 1.0),
            "slowest": dict(sorted(reactions.items(), key=lambda kv: -kv[1])[:5]),
        },
    }


def report(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    late = result["lateness"]
    r = result["reaction_seconds"]
    print(
        f"operator on a real API server: {result['taskqueues']} TaskQueues, poll {result['poll_seconds']}s, "
        f"window {result['window_seconds']}s (all reporting {result['seconds_until_all_reporting']}s after start)"
    )
    print(
        f"  ticks: {late['ticks']:.0f} of {result['ticks_expected']} expected, "
        f"{result['slots_skipped']} slots skipped by overrunning ticks"
    )
    for key in ("share_le_0.05s", "share_le_0.1s", "share_le_0.5s", "share_le_1.0s"):
        if key in late:
            print(f"  ticks started <= {key.removeprefix('share_le_')} late: {late[key]:.2%}")
    took = result["tick_duration"]
    for key in ("share_le_0.1s", "share_le_1.0s", "share_le_2.5s"):
        if key in took:
            print(f"  ticks that took <= {key.removeprefix('share_le_')}: {took[key]:.2%}")
    op, load = result["operator"], result["load_average_1m"]
    print(
        f"  operator process: {op['cpu_seconds']}s CPU ({op['cpu_share_of_one_core']:.0%} of a core), "
        f"{op['cpu_ms_per_taskqueue_per_minute']} ms CPU per TaskQueue per minute; "
        f"RSS {op['rss_mib']} MiB = {op['rss_kib_per_taskqueue']} KiB per TaskQueue; "
        f"load average {load['mean']} (max {load['max']})"
    )
    print(
        f"  enqueue -> replicas set, from 0 (n={r['count']}, missed {r['missed']}): p50 {r['p50']}s, "
        f"p99 {r['p99']}s, max {r['max']}s; {r['within_target']}/{r['count']} within {r['target']}s"
    )


if __name__ == "__main__":
    sys.exit(main())
