"""Two operator replicas with kopf peering on the real API server: one is active, the
other waits; SIGKILL the active one mid-burst and time the standby's takeover.

Brings up the local control plane (e2e/controlplane.py; no node: TaskQueues with
minReplicas 0 need no pod, `spec.replicas` is what is watched), installs the chart with
no operator pod plus kopf's peering CRDs (as `replicaCount` > 1 renders them), and runs
two `kopf run -m ebbtide_operator.main` processes with EBBTIDE_PEERING set, as the chart
would in two pods. Then:

1. a burst on TaskQueue `a`: its replicas rise; only one replica's log says it scaled;
2. SIGKILL that replica (no goodbye: its peering entry must expire), then at once a burst
   on TaskQueue `b`;
3. the takeover: seconds from the kill to `b`'s replicas > 0, set by the standby.
   Target: within 15 s (peering lifetime 10 s).

    .venv/bin/python bench/operator_failover.py [--lifetime 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import ebbtide  # noqa: E402
from support.servers import redis_server  # noqa: E402

from e2e.controlplane import ControlPlane  # noqa: E402
from e2e.tests.support import (  # noqa: E402
    OperatorProcess,
    install_chart,
    recreate_namespace,
    wait_for,
)

NS = "bench-failover"


def taskqueue(name: str) -> dict:
    return {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "TaskQueue",
        "metadata": {"name": name},
        "spec": {
            "broker": {"type": "redis", "external": {"secretRef": {"name": "broker"}}},
            "queues": [{"name": f"q-{name}"}],
            "worker": {"image": "ebbtide/runtime:bench", "app": "m:app", "concurrency": 4},
            "scaling": {"minReplicas": 0, "maxReplicas": 20, "pollSeconds": 2},
        },
    }


def peering_crds(helm: str, env: dict[str, str]) -> list[dict]:
    import yaml

    out = subprocess.run(
        [helm, "template", "ebbtide", str(ROOT / "charts" / "ebbtide"), "--set", "replicaCount=2",
         "--show-only", "templates/peering-crds.yaml", "--kube-version", "1.36.3"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [doc for doc in yaml.safe_load_all(out) if doc]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lifetime", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from kubernetes import client, config

    plane = ControlPlane(attached=True).up()
    env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig)}
    api = config.new_client_from_config(config_file=str(plane.kubeconfig))
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    custom, extensions = client.CustomObjectsApi(api), client.ApiextensionsV1Api(api)
    helm = str(plane.bin_dir / "helm")
    operators: list[OperatorProcess] = []
    result: dict = {}
    try:
        install_chart(helm, env, operator_replicas=0)
        for crd in peering_crds(helm, env):
            try:
                extensions.create_custom_resource_definition(crd)
            except client.ApiException as error:
                if error.status != 409:
                    raise
        recreate_namespace(core, NS)
        with redis_server() as url:
            core.create_namespaced_secret(
                NS,
                client.V1Secret(
                    metadata=client.V1ObjectMeta(name="broker"), string_data={"url": url}
                ),
            )
            for name in ("a", "b"):
                custom.create_namespaced_custom_object(
                    "ebbtide.dev", "v1alpha1", NS, "taskqueues", taskqueue(name)
                )
            peering_env = {
                "EBBTIDE_PEERING": "ebbtide",
                "EBBTIDE_PEERING_LIFETIME": str(args.lifetime),
            }
            for i in range(2):
                workdir = Path(plane.root) / "bench-failover" / f"op{i}"
                extra = {**peering_env, "POD_NAME": f"operator-{i}"}
                operators.append(OperatorProcess.start(str(plane.kubeconfig), [NS], workdir, extra))
                time.sleep(1.0)  # pacing: the second replica is the younger one
            result = measure(url, apps, operators)
    finally:
        try:
            core.delete_namespace(NS)
            wait_for(
                lambda: NS not in {n.metadata.name for n in core.list_namespace().items},
                180,
                "namespace gone",
            )
        except (client.ApiException, AssertionError) as error:
            print(f"cleanup: {error}", file=sys.stderr)
        for operator in operators:
            operator.stop()
        if plane.started_here:
            plane.down()
    report(result, args.json)
    return 0


def replicas(apps, name: str) -> int:
    deployment = apps.read_namespaced_deployment(f"{name}-worker", NS)
    return deployment.spec.replicas or 0


def scaled(operator: OperatorProcess, name: str) -> bool:
    return f"{NS}/{name} ScaledUp" in operator.log_path.read_text(errors="replace")


def measure(url: str, apps, operators: list[OperatorProcess]) -> dict:
    app = ebbtide.App(broker_url=url)
    wait_for(lambda: replicas(apps, "a") == 0 and replicas(apps, "b") == 0, 120, "workers at 0")
    app.task(name="noop-a", queue="q-a")(lambda: None).send_many([()] * 100)
    started = time.monotonic()
    wait_for(lambda: replicas(apps, "a") > 0, 60, "a's replicas rising")
    first = time.monotonic() - started
    active = [op for op in operators if scaled(op, "a")]
    assert len(active) == 1, "exactly one replica scaled a"
    (standby,) = [op for op in operators if op is not active[0]]
    active[0].popen.kill()  # SIGKILL: no goodbye to the peering
    killed = time.monotonic()
    app.task(name="noop-b", queue="q-b")(lambda: None).send_many([()] * 100)
    wait_for(lambda: replicas(apps, "b") > 0, 120, "b's replicas rising after the kill")
    takeover = time.monotonic() - killed
    app.close()
    return {
        "first_scale_seconds": round(first, 2),
        "active": operators.index(active[0]),
        "takeover_seconds": round(takeover, 2),
        "taken_over_by_standby": scaled(standby, "b"),
        "target_seconds": 15,
    }


def report(result: dict, as_json: bool) -> None:
    if as_json or not result:
        print(json.dumps(result, indent=2))
        return
    print(
        f"two replicas, kopf peering: operator {result['active']} was active (a scaled in "
        f"{result['first_scale_seconds']}s); SIGKILL -> standby scaled b after "
        f"{result['takeover_seconds']}s (target {result['target_seconds']}s); "
        f"by the standby: {result['taken_over_by_standby']}"
    )


if __name__ == "__main__":
    sys.exit(main())
