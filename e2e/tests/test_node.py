"""The one-node cluster itself: what `make cluster-up` promises before any Ebbtide code
runs. Real containers from the images of `make images`, on the real kubelet."""

from __future__ import annotations

import urllib.request

from e2e import node
from e2e.tests.kit import RUNTIME_IMAGE, cluster_ip, kubectl, run_pod, security
from e2e.tests.support import wait_for


def test_node_is_ready_with_the_real_kubelet(core):
    found = core.read_node(node.NODE_NAME)
    assert found.status.node_info.kubelet_version.startswith("v1.")
    assert "$Format" not in found.status.node_info.kubelet_version
    assert found.status.node_info.container_runtime_version.startswith("containerd://")
    assert [a.address for a in found.status.addresses if a.type == "InternalIP"] == [node.NODE_IP]
    assert any(c.type == "Ready" and c.status == "True" for c in found.status.conditions)


def test_pod_runs_non_root_with_a_read_only_root_filesystem(core, namespace):
    code = (
        "import os\n"
        "print('uid', os.getuid(), flush=True)\n"
        "try:\n"
        "    open('/written', 'w')\n"
        "except OSError as e:\n"
        "    print('write refused:', e.strerror, flush=True)\n"
        "else:\n"
        "    raise SystemExit('the root filesystem is writable')\n"
    )
    phase, log = run_pod(core, namespace, "rootfs", code)
    assert phase == "Succeeded", log
    assert "uid 10001" in log
    assert "write refused: Read-only file system" in log


def test_services_dns_and_the_api_from_a_pod_and_clusterip_from_the_host(core, namespace, kube_env):
    labels = {"app": "web"}
    core.create_namespaced_pod(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "labels": labels},
            "spec": {
                "securityContext": {"runAsUser": 10001, "runAsNonRoot": True},
                "containers": [
                    {
                        "name": "web",
                        "image": RUNTIME_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["python", "-m", "http.server", "8000", "--directory", "/etc"],
                        "ports": [{"containerPort": 8000}],
                        "readinessProbe": {"tcpSocket": {"port": 8000}, "periodSeconds": 1},
                        "securityContext": security(),
                    }
                ],
            },
        },
    )
    core.create_namespaced_service(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8000}]},
        },
    )
    wait_for(
        lambda: core.read_namespaced_pod("web", namespace).status.container_statuses[0].ready,
        90,
        "the web pod ready",
    )
    # From the host, through kube-proxy's rules.
    ip = cluster_ip(core, namespace, "web")

    def answered() -> bool:
        with urllib.request.urlopen(f"http://{ip}/hostname", timeout=3) as response:
            return response.status == 200

    wait_for(answered, 30, "the ClusterIP answering from the host")
    # From a pod: cluster DNS (CoreDNS), the Service, and the API server as `kubernetes`.
    code = (
        "import socket, ssl, urllib.request\n"
        f"print('dns', socket.gethostbyname('web.{namespace}.svc.cluster.local'), flush=True)\n"
        "print('http', urllib.request.urlopen('http://web/hostname', timeout=5).status, flush=True)\n"
        "sa = '/var/run/secrets/kubernetes.io/serviceaccount/'\n"
        "ctx = ssl.create_default_context(cafile=sa + 'ca.crt')\n"
        "req = urllib.request.Request('https://kubernetes.default.svc/version',\n"
        "    headers={'Authorization': 'Bearer ' + open(sa + 'token').read()})\n"
        "print('api', urllib.request.urlopen(req, context=ctx, timeout=5).status, flush=True)\n"
    )
    phase, log = run_pod(core, namespace, "client", code)
    assert phase == "Succeeded", log
    assert f"dns {ip}" in log and "http 200" in log and "api 200" in log, log
    # kubectl logs and exec reach the kubelet at the node's InternalIP.
    logs = kubectl(kube_env, "logs", "-n", namespace, "web")
    assert "GET /hostname" in logs.stdout + logs.stderr
    exec_ = kubectl(kube_env, "exec", "-n", namespace, "web", "--", "id", "-u")
    assert exec_.stdout.strip() == "10001"


def test_a_claim_of_the_default_storage_class_is_bound(core, namespace):
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    claim = wait_for(
        lambda: (
            (c := core.read_namespaced_persistent_volume_claim("data", namespace)).status.phase
            == "Bound"
            and c
        ),
        60,
        "the claim Bound",
    )
    assert claim.spec.storage_class_name == node.STORAGE_CLASS


def test_the_replicaset_removes_the_lowest_deletion_cost_pods_first(core, apps, namespace):
    labels = {"app": "costly"}
    apps.create_namespaced_deployment(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "costly"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "terminationGracePeriodSeconds": 1,
                        "securityContext": {"runAsUser": 10001, "runAsNonRoot": True},
                        "containers": [
                            {
                                "name": "idle",
                                "image": RUNTIME_IMAGE,
                                "imagePullPolicy": "Never",
                                "command": ["python", "-c", "import signal; signal.pause()"],
                                "securityContext": security(),
                            }
                        ],
                    },
                },
            },
        },
    )

    def running() -> list[str]:
        pods = core.list_namespaced_pod(namespace, label_selector="app=costly").items
        names = [
            p.metadata.name
            for p in pods
            if p.status.phase == "Running" and p.metadata.deletion_timestamp is None
        ]
        return sorted(names) if len(names) == 3 else []

    pods = wait_for(running, 90, "3 pods running")
    costs = dict(zip(pods, (500, 0, 100), strict=True))
    for name, cost in costs.items():
        core.patch_namespaced_pod(
            name,
            namespace,
            {
                "metadata": {
                    "annotations": {"controller.kubernetes.io/pod-deletion-cost": str(cost)}
                }
            },
        )
    apps.patch_namespaced_deployment_scale("costly", namespace, {"spec": {"replicas": 1}})

    def survivors() -> list[str]:
        pods = core.list_namespaced_pod(namespace, label_selector="app=costly").items
        alive = [p.metadata.name for p in pods if p.metadata.deletion_timestamp is None]
        return alive if len(alive) == 1 else []

    assert wait_for(survivors, 60, "the scale-down to 1") == [max(costs, key=costs.get)]
