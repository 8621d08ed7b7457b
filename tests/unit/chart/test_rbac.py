"""The chart's RBAC, rendered by the real helm in both modes and asserted verb by verb:
the operator gets exactly what its code calls (operator/ebbtide_operator/kube.py and kopf's
watch, patch and event calls), Secrets are never listed or watched, nothing is granted that
no code path uses, and the aggregated roles give namespace users TaskQueues.
"""

from __future__ import annotations

from typing import Any

import pytest
from support.helm import HELM, NAMESPACE, by_kind, grants, only, render

pytestmark = pytest.mark.skipif(HELM is None, reason="no helm binary (run `make cluster-up`)")

# Every grant, and why; the tables must match exactly (no missing verb, no extra one).
OPERATOR = {
    # kopf: watch, finalizer; get: read_taskqueue, the re-read after a 409 on the status
    ("ebbtide.dev", "taskqueues"): {"get", "list", "watch", "patch"},
    ("ebbtide.dev", "taskqueues/status"): {"patch"},  # tick.py: patch_status
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "delete"},
    ("apps", "deployments/scale"): {"patch"},  # scale_deployment
    ("apps", "statefulsets"): {"get", "create", "patch", "delete"},
    ("", "services"): {"get", "create", "patch", "delete"},
    ("", "configmaps"): {"get", "create", "patch", "delete"},
    ("networking.k8s.io", "networkpolicies"): {"get", "create", "patch", "delete"},
    # by name; patch: our own role/admin Secrets on a rotation, the TLS ones on a renewal;
    # delete: ours on a type switch or when TLS is switched off
    ("", "secrets"): {"get", "create", "patch", "delete"},
    ("", "pods"): {"list", "patch"},  # list_pods (waiting reasons), annotate_pod (cost)
    ("", "events"): {"create"},  # kopf.event
}
DISCOVERY = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    ("", "namespaces"): {"list", "watch"},
}
EDIT = {
    ("ebbtide.dev", "taskqueues"): {
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
    },
    ("ebbtide.dev", "taskqueues/status"): {"get", "list", "watch"},
}
VIEW = {
    ("ebbtide.dev", "taskqueues"): {"get", "list", "watch"},
    ("ebbtide.dev", "taskqueues/status"): {"get", "list", "watch"},
}
AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == name]
    return found


def assert_exactly(rules: list[dict[str, Any]], wanted: dict[tuple[str, str], set[str]]) -> None:
    """Verb by verb, both ways, and no wildcard anywhere."""
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {field}: {rule}"
    table = grants(rules)
    for key in sorted(set(table) | set(wanted)):
        assert table.get(key, set()) == wanted.get(key, set()), key


def test_cluster_mode_grants_exactly_what_the_code_uses():
    docs = render()
    role = named(docs, "ClusterRole", "ebbtide")
    assert_exactly(role["rules"], OPERATOR | DISCOVERY)
    binding = only(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "ebbtide",
    }
    sa = only(docs, "ServiceAccount")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")


def test_cert_manager_certificates_only_when_asked_in_both_modes():
    """spec.broker.tls.issuerRef needs Certificates; off by default (an issuer signs)."""
    certificates = {("cert-manager.io", "certificates"): {"get", "create", "patch", "delete"}}
    role = named(render("rbac.certManager=true"), "ClusterRole", "ebbtide")
    assert_exactly(role["rules"], OPERATOR | DISCOVERY | certificates)
    docs = render("rbac.certManager=true", "watchNamespaces={team-a}")
    namespaced = [r for r in by_kind(docs, "Role") if r["metadata"]["name"] == "ebbtide"]
    (team,) = namespaced
    assert_exactly(team["rules"], OPERATOR | certificates)


def test_secrets_are_never_listed_or_watched_and_pvcs_are_not_granted():
    for docs in (render(), render("watchNamespaces={team-a}")):
        for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
            table = grants(role["rules"])
            assert not {"list", "watch"} & table.get(("", "secrets"), set()), role["metadata"]
            assert ("", "persistentvolumeclaims") not in table
            assert ("events.k8s.io", "events") not in table
            assert not any(
                "update" in verbs for (g, _), verbs in table.items() if g != "ebbtide.dev"
            )


def test_namespaced_mode_grants_the_same_rules_per_namespace_and_only_discovery_cluster_wide():
    docs = render("watchNamespaces={team-a,team-b}")
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert_exactly(role["rules"], OPERATOR)
    bindings = by_kind(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"][0]["namespace"] == NAMESPACE
    discovery = named(docs, "ClusterRole", "ebbtide-discovery")
    assert_exactly(discovery["rules"], DISCOVERY)
    assert only(docs, "ClusterRoleBinding")["roleRef"]["name"] == "ebbtide-discovery"
    names = {r["metadata"]["name"] for r in by_kind(docs, "ClusterRole")}
    assert names == {"ebbtide-discovery", "ebbtide-edit", "ebbtide-view"}


def test_namespaced_mode_can_have_nothing_cluster_scoped():
    docs = render("watchNamespaces={team-a}", "rbac.discovery=false", "rbac.aggregatedRoles=false")
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")


@pytest.mark.parametrize("sets", [(), ("watchNamespaces={team-a}",)], ids=["cluster", "ns"])
def test_aggregated_roles_let_namespace_users_manage_taskqueues(sets):
    docs = render(*sets)
    edit = named(docs, "ClusterRole", "ebbtide-edit")
    view = named(docs, "ClusterRole", "ebbtide-view")
    assert_exactly(edit["rules"], EDIT)
    assert_exactly(view["rules"], VIEW)
    edit_labels = {k for k, v in edit["metadata"]["labels"].items() if v == "true"}
    view_labels = {k for k, v in view["metadata"]["labels"].items() if v == "true"}
    assert edit_labels == {AGGREGATE + "edit", AGGREGATE + "admin"}
    assert view_labels == {AGGREGATE + "view"}
    # Aggregated roles are picked up by the defaults; nothing binds them to the operator.
    refs = [b["roleRef"]["name"] for b in by_kind(docs, "ClusterRoleBinding")]
    assert "ebbtide-edit" not in refs and "ebbtide-view" not in refs


def test_rbac_and_service_account_can_be_turned_off():
    docs = render("rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=ops")
    kinds = {doc["kind"] for doc in docs}
    assert kinds.isdisjoint({"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"})
    assert "ServiceAccount" not in kinds
    assert only(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"


def test_the_operator_is_told_its_namespace_and_identity():
    (container,) = only(render(), "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["EBBTIDE_OPERATOR_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.namespace"
    )
    assert env["EBBTIDE_OPERATOR_IDENTITY"]["value"] == (
        f"system:serviceaccount:{NAMESPACE}:ebbtide"
    )
