"""The Helm chart, checked through the real helm binary: `helm lint` is clean and the
`helm template` output holds the contracts (security contexts, the CRD identical to
crds/taskqueue.yaml, the ServiceMonitor toggle, the values schema rejecting bad input
with the field's name).

RBAC is test_rbac.py's. helm is found by support.helm.find_helm(); without one the module
is skipped (the static checks in test_static.py still run).
"""

from __future__ import annotations

import re
import tarfile
from typing import Any

import pytest
import yaml
from support.helm import (
    CHART,
    HELM,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    ROOT,
    by_kind,
    helm,
    only,
    render,
)

pytestmark = pytest.mark.skipif(HELM is None, reason="no helm binary (run `make cluster-up`)")


def test_helm_lint_is_clean():
    for extra in ([], ["--set", "watchNamespaces={team-a,team-b}"]):
        done = helm("lint", "--strict", str(CHART), *extra)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "0 chart(s) failed" in done.stdout
        assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout


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
    """The operator reads managed brokers' statistics through their NetworkPolicies: its
    pods carry the label, in the namespace the chart tells it (EBBTIDE_OPERATOR_NAMESPACE)."""
    from ebbtide_operator import naming
    from ebbtide_operator.build import redis

    labels = only(render(), "Deployment")["spec"]["template"]["metadata"]["labels"]
    owner = {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "TaskQueue",
        "metadata": {"name": "tq", "namespace": "team-a", "uid": "u"},
    }
    peers = redis.redis_network_policy(owner, NAMESPACE)["spec"]["ingress"][0]["from"]
    operator_peer = next(p for p in peers if "podSelector" in p and "namespaceSelector" in p)
    assert operator_peer["podSelector"]["matchLabels"].items() <= labels.items()
    assert operator_peer["namespaceSelector"] == {
        "matchLabels": {naming.NAMESPACE_NAME_LABEL: NAMESPACE}
    }
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


def test_crd_is_a_template_identical_to_crds_taskqueue_yaml_and_kept():
    """In templates (so `helm upgrade` updates it), with the chart's labels and
    helm.sh/resource-policy: keep added, and otherwise crds/taskqueue.yaml verbatim."""
    crd = only(render(), "CustomResourceDefinition")
    source = yaml.safe_load((ROOT / "crds" / "taskqueue.yaml").read_text())
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert source["metadata"]["labels"].items() <= crd["metadata"]["labels"].items()
    assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert {k: v for k, v in crd.items() if k != "metadata"} == {
        k: v for k, v in source.items() if k != "metadata"
    }
    assert crd["metadata"]["name"] == source["metadata"]["name"]
    assert not by_kind(render(include_crds=True), "CustomResourceDefinition")[1:]


def test_crds_install_false_leaves_the_crd_out():
    assert not by_kind(render("crds.install=false"), "CustomResourceDefinition")


def test_log_format_reaches_kopf():
    """plain is kopf's default (`full`: time, logger, level, message); json is asked for."""
    assert not [a for a in operator_container(render())["args"] if a.startswith("--log-format")]
    assert "--log-format=json" in operator_container(render("logFormat=json"))["args"]


def test_extra_volumes_and_mounts_and_a_linux_node_selector():
    docs = render(
        "extraVolumes[0].name=ca",
        "extraVolumes[0].configMap.name=corp-ca",
        "extraVolumeMounts[0].name=ca",
        "extraVolumeMounts[0].mountPath=/etc/ssl/corp",
        "extraVolumeMounts[0].readOnly=true",
    )
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "ca", "configMap": {"name": "corp-ca"}} in pod["volumes"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    mounts = operator_container(docs)["volumeMounts"]
    assert {"name": "ca", "mountPath": "/etc/ssl/corp", "readOnly": True} in mounts
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    default = only(render(), "Deployment")["spec"]["template"]["spec"]
    assert [v["name"] for v in default["volumes"]] == ["tmp"]


def test_pod_monitor_scrapes_the_workers_the_operator_builds():
    from ebbtide_operator import naming
    from ebbtide_operator.build import worker
    from ebbtide_operator.spec import parse_spec

    assert not by_kind(render(), "PodMonitor")
    spec = parse_spec(
        {
            "broker": {"type": "redis", "external": {"secretRef": {"name": "s"}}},
            "queues": [{"name": "q"}],
            "worker": {"image": "i", "app": "m:app"},
        }
    )
    template = worker.worker_pod_template("tq", spec)
    (container,) = template["spec"]["containers"]
    for sets, namespaces in (
        ((), {"any": True}),
        (("watchNamespaces={team-a,team-b}",), {"matchNames": ["team-a", "team-b"]}),
    ):
        monitor = only(render("podMonitor.enabled=true", *sets), "PodMonitor")
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert selector.items() <= template["metadata"]["labels"].items()
        assert monitor["spec"]["namespaceSelector"] == namespaces
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        assert endpoint["port"] in {p["name"] for p in container["ports"]}
        taskqueue_label = "__meta_kubernetes_pod_label_" + re.sub(
            r"[^a-zA-Z0-9_]", "_", naming.TASKQUEUE_LABEL
        )
        assert {"sourceLabels": [taskqueue_label], "targetLabel": "taskqueue"} in endpoint[
            "relabelings"
        ]


def test_service_monitor_honours_labels_and_takes_relabelings():
    monitor = only(
        render(
            "metrics.serviceMonitor.enabled=true",
            "metrics.serviceMonitor.relabelings[0].targetLabel=cluster",
            "metrics.serviceMonitor.relabelings[0].replacement=prod",
        ),
        "ServiceMonitor",
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True  # the series' own namespace label wins
    assert endpoint["relabelings"] == [{"targetLabel": "cluster", "replacement": "prod"}]
    plain = only(render("metrics.serviceMonitor.enabled=true"), "ServiceMonitor")
    assert "relabelings" not in plain["spec"]["endpoints"][0]


def test_every_object_is_labelled_and_namespaced_in_the_release_namespace():
    for doc in render():
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        if doc["kind"] not in {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}:
            assert doc["metadata"]["namespace"] == NAMESPACE


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ("logLevel=loud", "logLevel"),
        ("image.tag=latest", "tag"),
        ("watchNamespaces={Not_A_Namespace}", "watchNamespaces"),
        ("replicaCount=10", "replicaCount"),
        ("metrics.port=70000", "port"),
        ("unknownKey=1", "unknownKey"),
        ("logFormat=xml", "logFormat"),
        ("podMonitor.interval=often", "interval"),
        ("prometheusRule.alerts.backlogHigh.for=soon", "for"),
        ("extraVolumeMounts[0].name=ca", "mountPath"),
    ],
)
def test_values_schema_rejects_bad_values_naming_the_field(setting, field):
    done = helm("template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION, "--set", setting)
    assert done.returncode != 0
    assert field in done.stderr, done.stderr


def test_packaged_chart_carries_the_crd_file_not_the_symlink(tmp_path):
    """helm packages the symlink's target: the chart archive stands alone."""
    done = helm("package", str(CHART), "--destination", str(tmp_path))
    assert done.returncode == 0, done.stderr
    (archive,) = tmp_path.glob("ebbtide-*.tgz")
    with tarfile.open(archive) as tar:
        member = tar.getmember("ebbtide/files/taskqueue.yaml")
        assert member.isfile()
        packaged = tar.extractfile(member).read()
    assert packaged == (ROOT / "crds" / "taskqueue.yaml").read_bytes()
