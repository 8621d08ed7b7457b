"""The chart with replicaCount > 1: kopf peering instead of --standalone (ha.py's
environment), the peering CRDs and RBAC, a PodDisruptionBudget, RollingUpdate that
surges before it removes, and a topology spread; with one replica none of it."""

from __future__ import annotations

from typing import Any

import pytest
from ebbtide_operator import ha
from support.helm import CHART, HELM, by_kind, grants, helm, only, render

pytestmark = pytest.mark.skipif(HELM is None, reason="no helm binary (run `make cluster-up`)")


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return only(docs, "Deployment")["spec"]["template"]["spec"]


def env_of(docs: list[dict[str, Any]]) -> dict[str, str]:
    (container,) = pod_spec(docs)["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_one_replica_stays_standalone_with_recreate_and_no_ha_objects():
    docs = render()
    deployment = only(docs, "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "--standalone" in pod_spec(docs)["containers"][0]["args"]
    assert "EBBTIDE_PEERING" not in env_of(docs)
    assert (
        not by_kind(docs, "PodDisruptionBudget")
        and not by_kind(docs, "CustomResourceDefinition")[1:]
    )
    assert "topologySpreadConstraints" not in pod_spec(docs)


def test_replicas_elect_one_active_operator_through_peering():
    docs = render("replicaCount=3")
    deployment = only(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert "--standalone" not in pod_spec(docs)["containers"][0]["args"]
    env = env_of(docs)
    peering = ha.from_env(env)  # what the chart sets is what the operator accepts
    assert peering == ha.Peering("ebbtide", 10, ()) and peering.clusterwide
    crds = {c["metadata"]["name"]: c for c in by_kind(docs, "CustomResourceDefinition")}
    assert {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"} <= set(crds)
    assert crds["clusterkopfpeerings.kopf.dev"]["spec"]["scope"] == "Cluster"
    assert crds["kopfpeerings.kopf.dev"]["metadata"]["annotations"] == {
        "helm.sh/resource-policy": "keep"
    }
    role = next(r for r in by_kind(docs, "ClusterRole") if r["metadata"]["name"] == "ebbtide")
    assert grants(role["rules"])[("kopf.dev", "clusterkopfpeerings")] == {
        "get", "list", "watch", "patch", "create"
    }  # fmt: skip


def test_a_disruption_budget_and_a_spread_keep_a_standby():
    docs = render("replicaCount=2")
    pdb = only(docs, "PodDisruptionBudget")
    selector = only(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}
    (spread,) = pod_spec(docs)["topologySpreadConstraints"]
    assert spread == {
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": selector},
    }
    assert "topologySpreadConstraints" not in pod_spec(
        render("replicaCount=2", "ha.topologySpreadConstraints=null")
    )


def test_namespaced_replicas_peer_in_each_watched_namespace():
    docs = render("replicaCount=2", "watchNamespaces={team-a,team-b}")
    peering = ha.from_env(env_of(docs))
    assert peering is not None and peering.namespaces == ("team-a", "team-b")
    for role in by_kind(docs, "Role"):
        table = grants(role["rules"])
        assert table[("kopf.dev", "kopfpeerings")] == {"get", "list", "watch", "patch", "create"}
        assert ("kopf.dev", "clusterkopfpeerings") not in table


def test_bad_ha_values_are_refused_naming_the_field():
    for bad, field in (
        ("ha.peeringLifetimeSeconds=1", "peeringLifetimeSeconds"),
        ("ha.peeringName=Bad_Name", "peeringName"),
        ("replicaCount=20", "replicaCount"),
    ):
        done = helm("template", "t", str(CHART), "--kube-version", "1.36.3", "--set", bad)
        assert done.returncode != 0 and field in done.stderr, (bad, done.stderr)
