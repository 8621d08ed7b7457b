"""`helm upgrade` updates the TaskQueue CRD, on a real kube-apiserver.

The test starts its own etcd and kube-apiserver on free loopback ports (the binaries `make
binaries` builds next to helm; no e2e harness, no nodes), installs a copy of the chart whose
CRD lacks `spec.scaling.paused`, upgrades to the chart as it is, and checks that the field
is rejected before and stored after. It also checks what `helm.sh/resource-policy: keep`
promises: the CRD outlives `helm uninstall`, and a new install takes it over. A second
test upgrades a CRD whose durations were numbers to the integer-seconds one, with a
fractional TaskQueue stored before: still served and read, while new writes need whole
seconds. Skipped without the binaries.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from support.helm import CHART, HELM, NAMESPACE, RELEASE
from support.servers import free_port

BIN = Path(HELM).parent if HELM else None
NEEDED = ("etcd", "kube-apiserver", "kubectl")
pytestmark = pytest.mark.skipif(
    BIN is None or not all((BIN / name).exists() for name in NEEDED),
    reason="no etcd/kube-apiserver/kubectl next to helm (run `make binaries`)",
)
CRD_NAME = "taskqueues.ebbtide.dev"
PAUSED = """                    paused:
                      type: boolean
                      description: Stop changing replicas (status keeps updating).
                      default: false
"""


class Cluster:
    """kubectl and helm against the test's own API server."""

    def __init__(self, root: Path, kubeconfig: Path) -> None:
        self.root = root
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "HELM_CACHE_HOME": str(root / "helm-cache"),
            "HELM_CONFIG_HOME": str(root / "helm-config"),
            "HELM_DATA_HOME": str(root / "helm-data"),
        }

    def run(self, tool: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        assert BIN is not None
        return subprocess.run(
            [str(BIN / tool), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            env=self.env,
            check=False,
        )

    def ok(self, tool: str, *args: str, stdin: str | None = None) -> str:
        done = self.run(tool, *args, stdin=stdin)
        assert done.returncode == 0, f"{tool} {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    assert BIN is not None
    root = tmp_path_factory.mktemp("apiserver")
    (root / "tokens.csv").write_text("admintoken,admin,admin,system:masters\n")
    subprocess.run(
        ["openssl", "genrsa", "-out", str(root / "sa.key"), "2048"], check=True, capture_output=True
    )
    subprocess.run(
        ["openssl", "rsa", "-in", str(root / "sa.key"), "-pubout", "-out", str(root / "sa.pub")],
        check=True,
        capture_output=True,
    )
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    logs = [open(root / name, "w") for name in ("etcd.log", "apiserver.log")]  # noqa: SIM115
    etcd = subprocess.Popen(
        [
            str(BIN / "etcd"),
            f"--data-dir={root / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
        ],
        stdout=logs[0],
        stderr=subprocess.STDOUT,
    )
    apiserver = subprocess.Popen(
        [
            str(BIN / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--secure-port={api_port}",
            "--bind-address=127.0.0.1",
            f"--cert-dir={root / 'certs'}",
            f"--token-auth-file={root / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={root / 'sa.pub'}",
            f"--service-account-signing-key-file={root / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/16",
        ],
        stdout=logs[1],
        stderr=subprocess.STDOUT,
    )
    kubeconfig = root / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {
                            "server": f"https://127.0.0.1:{api_port}",
                            "insecure-skip-tls-verify": True,
                        },
                    }
                ],
                "users": [{"name": "u", "user": {"token": "admintoken"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    client = Cluster(root, kubeconfig)
    try:
        deadline = time.monotonic() + 90
        while client.run("kubectl", "get", "--raw", "/readyz").returncode != 0:
            assert apiserver.poll() is None, (root / "apiserver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "kube-apiserver not ready in 90 s"
            time.sleep(0.5)
        client.ok("kubectl", "create", "namespace", NAMESPACE)
        yield client
    finally:
        for proc in (apiserver, etcd):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()


def chart_without_paused(root: Path) -> Path:
    """A copy of the chart (symlinks resolved) whose CRD has no spec.scaling.paused."""
    copy = root / "old-chart" / "ebbtide"
    shutil.copytree(CHART, copy, symlinks=False)
    crd = copy / "files" / "taskqueue.yaml"
    text = crd.read_text()
    assert PAUSED in text, "the test's CRD edit no longer applies: update PAUSED"
    crd.write_text(text.replace(PAUSED, ""))
    return copy


def taskqueue(name: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "ebbtide.dev/v1alpha1",
            "kind": "TaskQueue",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "broker": {"type": "redis", "external": {"secretRef": {"name": "url"}}},
                "queues": [{"name": "q"}],
                "worker": {"image": "w:1", "app": "m:app"},
                "scaling": {"paused": True},
            },
        }
    )


def test_helm_upgrade_adds_a_field_and_uninstall_keeps_the_crd(cluster: Cluster):
    old = chart_without_paused(cluster.root)
    # No --wait: without a controller-manager no Deployment ever reports progress.
    install = ("--namespace", NAMESPACE, "--set", "replicaCount=0")
    cluster.ok("helm", "install", RELEASE, str(old), *install)
    cluster.ok("kubectl", "wait", "--for=condition=Established", f"crd/{CRD_NAME}")
    before = cluster.run("kubectl", "apply", "-f", "-", stdin=taskqueue("before"))
    assert before.returncode != 0 and "spec.scaling.paused" in before.stderr, before

    cluster.ok("helm", "upgrade", RELEASE, str(CHART), *install)
    crd = yaml.safe_load(cluster.ok("kubectl", "get", "crd", CRD_NAME, "-o", "yaml"))
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    scaling = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["scaling"]
    assert "paused" in scaling["properties"]
    cluster.ok("kubectl", "apply", "-f", "-", stdin=taskqueue("after"))
    stored = yaml.safe_load(cluster.ok("kubectl", "get", "tq", "after", "-o", "yaml"))
    assert stored["spec"]["scaling"]["paused"] is True  # stored, not pruned

    # The API server republishes the CRD's OpenAPI a moment after the update.
    deadline = time.monotonic() + 60
    while True:
        explained = " ".join(cluster.ok("kubectl", "explain", "taskqueue.spec.scaling").split())
        if "Stop changing replicas" in explained or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert "Stop changing replicas" in explained and "Fewest worker replicas" in explained

    done = cluster.run("helm", "uninstall", RELEASE, "--namespace", NAMESPACE)
    assert done.returncode == 0, done.stderr
    assert "kept due to the resource policy" in done.stdout + done.stderr
    cluster.ok("kubectl", "get", "tq", "after")  # the CRD, and the TaskQueue, are still there
    cluster.ok("helm", "install", RELEASE, str(CHART), *install)  # takes the kept CRD over


# The duration fields, and their type before they became whole seconds.
DURATIONS = (
    ("queues", "targetBacklogSeconds"),
    ("scaling", "targetBacklogSeconds"),
    ("scaling", "pollSeconds"),
    ("scaling", "scaleDownStabilizationSeconds"),
    ("scaling", "scaleToZeroIdleSeconds"),
)


def crd_with_number_durations() -> str:
    """crds/taskqueue.yaml as it was when durations were numbers (and before
    initialTaskMilliseconds): what a cluster upgraded from that release holds."""
    crd = yaml.safe_load((CHART / "files" / "taskqueue.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for parent, field in DURATIONS:
        props = spec["properties"][parent]
        props = props["items"]["properties"] if parent == "queues" else props["properties"]
        assert props[field]["type"] == "integer", (parent, field)
        props[field]["type"] = "number"
    scaling = spec["properties"]["scaling"]["properties"]
    del scaling["initialTaskMilliseconds"]
    scaling["initialTaskSeconds"]["default"] = 1
    return yaml.safe_dump(crd)


def durations_taskqueue(name: str, scaling: dict, queue_target: float) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "ebbtide.dev/v1alpha1",
            "kind": "TaskQueue",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "broker": {"type": "redis", "external": {"secretRef": {"name": "url"}}},
                "queues": [{"name": "q", "targetBacklogSeconds": queue_target}],
                "worker": {"image": "w:1", "app": "m:app"},
                "scaling": scaling,
            },
        }
    )


def apply_crd(cluster: Cluster, text: str) -> None:
    cluster.ok("kubectl", "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=text)
    cluster.ok("kubectl", "wait", "--for=condition=Established", f"crd/{CRD_NAME}")


def test_durations_become_whole_seconds_and_old_fractional_objects_still_read(cluster: Cluster):
    from ebbtide_operator.spec import parse_spec

    apply_crd(cluster, crd_with_number_durations())
    old = {"pollSeconds": 2.5, "targetBacklogSeconds": 12.5, "initialTaskSeconds": 0.05}
    cluster.ok("kubectl", "apply", "-f", "-", stdin=durations_taskqueue("fractional", old, 2.25))

    apply_crd(cluster, (CHART / "files" / "taskqueue.yaml").read_text())

    def stored(name: str) -> dict:
        return yaml.safe_load(cluster.ok("kubectl", "get", "tq", name, "-o", "yaml"))["spec"]

    # The stored object is served as it is, and the operator reads its fractions.
    spec = parse_spec(stored("fractional"))
    assert (spec.scaling.poll_seconds, spec.scaling.target_backlog_seconds) == (2.5, 12.5)
    assert spec.scaling.initial_task_seconds == 0.05
    assert spec.queues[0].target_backlog_seconds == 2.25
    # Validation ratcheting: editing another field leaves the old fractions alone.
    cluster.ok(
        "kubectl", "patch", "tq", "fractional", "--type=merge",
        "-p", '{"spec": {"scaling": {"maxReplicas": 11}}}',
    )  # fmt: skip
    assert stored("fractional")["scaling"]["pollSeconds"] == 2.5

    # A new write takes whole seconds only, and says which field is wrong.
    bad = cluster.run(
        "kubectl", "apply", "-f", "-",
        stdin=durations_taskqueue("new-fraction", {"pollSeconds": 2.5}, 3),
    )  # fmt: skip
    assert bad.returncode != 0 and "spec.scaling.pollSeconds" in bad.stderr, bad.stderr
    assert "integer" in bad.stderr, bad.stderr
    whole = {"pollSeconds": 2, "scaleToZeroIdleSeconds": 300, "initialTaskMilliseconds": 50}
    cluster.ok("kubectl", "apply", "-f", "-", stdin=durations_taskqueue("whole", whole, 3))
    spec = parse_spec(stored("whole"))
    assert spec.scaling.poll_seconds == 2 and spec.scaling.scale_to_zero_idle_seconds == 300
    assert spec.scaling.initial_task_seconds == 0.05
    assert spec.scaling.target_backlog_seconds == 30  # the CRD's default, an integer
    assert "initialTaskSeconds" not in stored("whole")["scaling"]  # no default any more
