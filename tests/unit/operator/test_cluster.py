"""One Cluster protocol: the real client wrapper and the in-memory one the pure-logic unit
tests use both implement all of it, with the same parameters, so a unit test on
MemoryCluster exercises the calls the operator makes on the API server (the integration
tests make them on a real one, tests/support/apiserver.py)."""

from __future__ import annotations

import inspect

import pytest
from ebbtide_operator.cluster import Cluster
from ebbtide_operator.kube import KubeCluster
from support.memory_cluster import MemoryCluster

METHODS = sorted(
    name
    for name, member in vars(Cluster).items()
    if inspect.iscoroutinefunction(member) and not name.startswith("_")
)


def test_the_protocol_names_every_call_the_operator_makes():
    assert METHODS == [
        "annotate_pod",
        "create",
        "delete",
        "list_pods",
        "patch",
        "patch_status",
        "read",
        "read_deployment",
        "read_secret_value",
        "read_taskqueue",
        "scale_deployment",
    ]


@pytest.mark.parametrize("implementation", [KubeCluster, MemoryCluster], ids=lambda c: c.__name__)
def test_both_implementations_have_every_method_with_the_same_parameters(implementation):
    assert issubclass(implementation, Cluster)
    for name in METHODS:
        wanted = list(inspect.signature(getattr(Cluster, name)).parameters)
        actual = getattr(implementation, name)
        assert inspect.iscoroutinefunction(actual), name
        assert list(inspect.signature(actual).parameters) == wanted, name
