"""The Helm chart, checked through the real helm binary: `helm lint` is clean and the
`helm template` output holds the contracts (least-privilege RBAC in both modes, security
contexts, the CRD identical to crds/taskqueue.yaml, the ServiceMonitor toggle, the values
schema rejecting bad input with the field's name).

helm is found by `find_helm()`: $EBBTIDE_HELM, then the control plane's build cache
(~/.cache/ebbtide/k8s-*/helm, built by `make cluster-up`), then ~/.cache/ebbtide/helm-*/helm,
then PATH. Without one the module is skipped (the static checks in test_static.py
still run).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[3]
CHART = ROOT / "charts" / "ebbtide"
RELEASE, NAMESPACE = "ebbtide", "ebbtide-system"
# helm built with plain `go install` assumes Kubernetes v1.20 offline; render for a current one.
KUBE_VERSION = "1.33.0"
WILDCARD = "*"


def find_helm() -> str | None:
    explicit = os.environ.get("EBBTIDE_HELM")
    if explicit:
        return explicit
    cache = Path.home() / ".cache" / "ebbtide"
    for pattern in ("k8s-*/helm", "k8s-*/bin/helm", "helm-*/helm"):
        found = sorted(cache.glob(pattern), reverse=True)
        if found:
            return str(found[0])
    return shutil.which("helm")


HELM = find_helm()
pytestmark = pytest.mark.skipif(HELM is None, reason="no helm binary (run `make cluster-up`)")


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/ebbtide-helm-cache"}
    return subprocess.run(
        [HELM, *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def render(*sets: str, include_crds: bool = False) -> list[dict[str, Any]]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    args += ["--kube-version", KUBE_VERSION]
    if include_crds:
        args.append("--include-crds")
    for item in sets:
        args += ["--set", item]
    done = helm(*args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """{(apiGroup, resource): verbs} over all rules."""
    table: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                table.setdefault((group, resource), set()).update(rule["verbs"])
    return table


# What the operator does, and therefore needs (see operator/ebbtide_operator/kube.py).
NEEDED = {
    ("ebbtide.dev", "taskqueues"): {"get", "list", "watch", "patch"},
    ("ebbtide.dev", "taskqueues/status"): {"patch"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "delete"},
    ("apps", "deployments/scale"): {"patch"},
    ("apps", "statefulsets"): {"get", "create", "patch", "delete"},
    ("", "services"): {"get", "create", "patch", "delete"},
    ("", "secrets"): {"get", "create", "patch", "delete"},
    ("", "persistentvolumeclaims"): {"get", "list", "delete"},
    ("", "configmaps"): {"get", "create", "patch", "delete"},
    ("networking.k8s.io", "networkpolicies"): {"get", "create", "patch", "delete"},
    ("", "pods"): {"get", "list", "watch", "patch"},
    ("", "events"): {"create"},
}
NEVER = {"escalate", "bind", "impersonate", "deletecollection"}


def assert_least_privilege(rules: list[dict[str, Any]]) -> None:
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert WILDCARD not in rule[field], f"wildcard in {field}: {rule}"
        assert not NEVER & set(rule["verbs"]), rule
    table = grants(rules)
    for (_group, resource), verbs in table.items():
        assert resource not in {"clusterroles", "roles", "rolebindings", "clusterrolebindings"}
        if resource in {"customresourcedefinitions", "namespaces"}:
            assert verbs <= {"get", "list", "watch"}, f"{resource} must be read-only: {verbs}"
        if resource == "configmaps":  # only the managed RabbitMQ's own, by name
            assert verbs <= {"get", "create", "patch", "delete"}, verbs


def test_helm_lint_is_clean():
    for extra in ([], ["--set", "watchNamespaces={team-a,team-b}"]):
        done = helm("lint", "--strict", str(CHART), *extra)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "0 chart(s) failed" in done.stdout
        assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout


def test_default_install_is_cluster_wide_with_a_cluster_role():
    docs = render()
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    role = only(docs, "ClusterRole")
    assert_least_privilege(role["rules"])
    table = grants(role["rules"])
    for key, verbs in NEEDED.items():
        assert verbs <= table.get(key, set()), f"missing {key}: {verbs - table.get(key, set())}"
    assert {"list", "watch"} <= table[("apiextensions.k8s.io", "customresourcedefinitions")]
    assert {"list", "watch"} <= table[("", "namespaces")]
    binding = only(docs, "ClusterRoleBinding")
    sa = only(docs, "ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}
    ]
    args = operator_container(docs)["args"]
    assert "--all-namespaces" in args and not any(a.startswith("--namespace") for a in args)


def test_watch_namespaces_gives_one_role_per_namespace_and_no_cluster_write():
    docs = render("watchNamespaces={team-a,team-b}")
    roles, bindings = by_kind(docs, "Role"), by_kind(docs, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    sa_name = only(docs, "ServiceAccount")["metadata"]["name"]
    for role in roles:
        assert_least_privilege(role["rules"])
        table = grants(role["rules"])
        for key, verbs in NEEDED.items():
            assert verbs <= table.get(key, set())
        assert ("apiextensions.k8s.io", "customresourcedefinitions") not in table
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"][0]["name"] == sa_name
        assert binding["subjects"][0]["namespace"] == NAMESPACE
    # The only cluster-scoped grant is read-only discovery.
    for cluster_role in by_kind(docs, "ClusterRole"):
        for rule in cluster_role["rules"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
            assert set(rule["resources"]) <= {"customresourcedefinitions", "namespaces"}
    args = operator_container(docs)["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert "--all-namespaces" not in args


def test_watch_namespaces_without_discovery_has_nothing_cluster_scoped():
    docs = render("watchNamespaces={team-a}", "rbac.discovery=false")
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")


def test_rbac_and_service_account_can_be_turned_off():
    docs = render("rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=ops")
    kinds = {doc["kind"] for doc in docs}
    assert kinds.isdisjoint({"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"})
    assert "ServiceAccount" not in kinds
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "ops"


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return container


def test_operator_deployment_is_locked_down():
    docs = render()
    deployment = only(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = operator_container(docs)
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert pod["serviceAccountName"] == only(docs, "ServiceAccount")["metadata"]["name"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_operator_pods_carry_the_label_managed_broker_policies_admit():
    """The operator reads managed brokers' statistics through their NetworkPolicies."""
    from ebbtide_operator import naming
    from ebbtide_operator.build import redis

    labels = only(render(), "Deployment")["spec"]["template"]["metadata"]["labels"]
    owner = {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "TaskQueue",
        "metadata": {"name": "tq", "namespace": "team-a", "uid": "u"},
    }
    peers = redis.redis_network_policy(owner)["spec"]["ingress"][0]["from"]
    operator_peer = next(p for p in peers if "namespaceSelector" in p)
    assert operator_peer["podSelector"]["matchLabels"].items() <= labels.items()
    assert labels[naming.OPERATOR_LABEL] == "true"


def test_operator_runs_kopf_standalone_with_liveness_and_metrics():
    container = operator_container(render())
    assert container["command"] == ["kopf"]
    args = container["args"]
    assert args[:3] == ["run", "--module=ebbtide_operator.main", "--standalone"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in args
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"healthz": 8080, "metrics": 8081}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["EBBTIDE_OPERATOR_METRICS_PORT"] == "8081"
    assert container["image"] == "ebbtide/operator:0.1.0"


def test_log_level_and_extra_args_reach_kopf():
    args = operator_container(render("logLevel=debug", "extraArgs={--log-format=json}"))["args"]
    assert "--debug" in args and args[-1] == "--log-format=json"


def test_metrics_service_targets_the_operator_pod():
    docs = render()
    service = only(docs, "Service")
    deployment = only(docs, "Deployment")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8081, "targetPort": "metrics", "protocol": "TCP"}
    ]


def test_service_monitor_is_off_by_default_and_renders_when_enabled():
    assert not by_kind(render(), "ServiceMonitor")
    docs = render(
        "metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=prom"
    )
    monitor = only(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    service = only(docs, "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )


def test_crd_in_the_chart_is_identical_to_crds_taskqueue_yaml():
    docs = render(include_crds=True)
    crds = by_kind(docs, "CustomResourceDefinition")
    assert crds == [yaml.safe_load((ROOT / "crds" / "taskqueue.yaml").read_text())]


def test_every_object_is_labelled_and_namespaced_in_the_release_namespace():
    for doc in render():
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        if doc["kind"] not in {"ClusterRole", "ClusterRoleBinding"}:
            assert doc["metadata"]["namespace"] == NAMESPACE


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ("logLevel=loud", "logLevel"),
        ("image.tag=latest", "tag"),
        ("watchNamespaces={Not_A_Namespace}", "watchNamespaces"),
        ("replicaCount=2", "replicaCount"),
        ("metrics.port=70000", "port"),
        ("unknownKey=1", "unknownKey"),
    ],
)
def test_values_schema_rejects_bad_values_naming_the_field(setting, field):
    done = helm("template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION, "--set", setting)
    assert done.returncode != 0
    assert field in done.stderr, done.stderr


def test_packaged_chart_carries_the_crd_file_not_the_symlink(tmp_path):
    done = helm("package", str(CHART), "--destination", str(tmp_path))
    assert done.returncode == 0, done.stderr
    (archive,) = tmp_path.glob("ebbtide-*.tgz")
    with tarfile.open(archive) as tar:
        member = tar.getmember("ebbtide/crds/taskqueue.yaml")
        assert member.isfile()
        packaged = tar.extractfile(member).read()
    assert packaged == (ROOT / "crds" / "taskqueue.yaml").read_bytes()
