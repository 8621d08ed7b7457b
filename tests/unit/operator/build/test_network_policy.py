"""The managed broker's NetworkPolicy admits exactly: this TaskQueue's workers, its
labelled producers in the same namespace, the listed namespaces, and the operator's pods
in the operator's namespace; namespaces only by the API server's own name label."""

from __future__ import annotations

from ebbtide_operator import naming
from ebbtide_operator.build import common, redis
from ebbtide_operator.provision import desired_broker_objects
from ebbtide_operator.spec import parse_spec
from support.taskqueue import assert_owned, managed_spec, taskqueue

NAME_LABEL = "kubernetes.io/metadata.name"


def peers(policy: dict) -> list[dict]:
    (rule,) = policy["spec"]["ingress"]
    return rule["from"]


def test_without_an_operator_namespace_only_same_namespace_pods_are_admitted():
    policy = redis.redis_network_policy(taskqueue(managed_spec("redis")))
    assert_owned(policy)
    assert peers(policy) == [
        {"podSelector": {"matchLabels": naming.worker_selector("tq1")}},
        {"podSelector": {"matchLabels": {naming.PRODUCER_LABEL: "tq1"}}},
    ]
    assert policy["spec"]["policyTypes"] == ["Ingress"]


def test_no_peer_trusts_a_pod_label_across_namespaces():
    """`namespaceSelector: {}` (every namespace) never appears; every cross-namespace peer
    names its namespace by the label the API server sets."""
    policy = common.broker_network_policy(
        taskqueue(managed_spec("redis")), "tq1-redis", [6379], "ops", ["team-b", "team-a"]
    )
    for peer in peers(policy):
        if "namespaceSelector" in peer:
            labels = peer["namespaceSelector"]["matchLabels"]
            assert list(labels) == [NAME_LABEL] and labels[NAME_LABEL], peer
            assert "matchExpressions" not in peer["namespaceSelector"]


def test_allowed_namespaces_and_the_operator_namespace():
    policy = common.broker_network_policy(
        taskqueue(managed_spec("redis")), "tq1-redis", [6379], "ops", ["team-b", "team-a", "team-b"]
    )
    assert peers(policy)[2:] == [
        {"namespaceSelector": {"matchLabels": {NAME_LABEL: "team-a"}}},
        {"namespaceSelector": {"matchLabels": {NAME_LABEL: "team-b"}}},
        {
            "namespaceSelector": {"matchLabels": {NAME_LABEL: "ops"}},
            "podSelector": {"matchLabels": {naming.OPERATOR_LABEL: "true"}},
        },
    ]
    assert policy["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 6379}]


def test_the_spec_reaches_the_policy_through_provision():
    spec_data = managed_spec("rabbitmq")
    spec_data["broker"]["allowedNamespaces"] = ["producers"]
    owner = taskqueue(spec_data)
    objects = desired_broker_objects(owner, parse_spec(spec_data), "ebbtide-system")
    (policy,) = [o for o in objects if o["kind"] == "NetworkPolicy"]
    assert {"namespaceSelector": {"matchLabels": {NAME_LABEL: "producers"}}} in peers(policy)
    operator_peer = peers(policy)[-1]
    assert operator_peer["namespaceSelector"]["matchLabels"] == {NAME_LABEL: "ebbtide-system"}
    ports = [p["port"] for p in policy["spec"]["ingress"][0]["ports"]]
    assert ports == [naming.RABBITMQ_TLS_PORT, naming.RABBITMQ_MANAGEMENT_TLS_PORT]  # TLS default
