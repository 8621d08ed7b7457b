"""HA settings: unique priorities with the oldest replica first, and peering settings
that fail naming the variable."""

from __future__ import annotations

import pytest
from ebbtide_operator.ha import (
    Peering,
    PeeringConfigError,
    from_env,
    peering_object,
    priority,
)


def test_older_replicas_outrank_newer_ones_and_names_break_ties():
    assert priority(1_000.0, "op-a") > priority(1_000.001, "op-a") > priority(2_000.0, "op-a")
    same_ms = {priority(1_000.0, f"op-{i}") for i in range(50)}
    assert len(same_ms) > 40  # a tie within one millisecond is broken by the pod name
    assert all(p > 0 for p in same_ms)
    assert priority(1_000.0, "op-a") == priority(1_000.0, "op-a")


def test_standalone_without_a_peering_name():
    assert from_env({}) is None and from_env({"EBBTIDE_PEERING": " "}) is None


def test_settings_from_the_environment():
    p = from_env({"EBBTIDE_PEERING": "ebbtide"})
    assert p == Peering("ebbtide", 10, ()) and p.clusterwide
    p = from_env(
        {
            "EBBTIDE_PEERING": "ebbtide",
            "EBBTIDE_PEERING_LIFETIME": "20",
            "EBBTIDE_PEERING_NAMESPACES": "team-a, team-b,",
        }
    )
    assert p == Peering("ebbtide", 20, ("team-a", "team-b")) and not p.clusterwide


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"EBBTIDE_PEERING": "Not_A_Name"}, "EBBTIDE_PEERING='Not_A_Name'"),
        ({"EBBTIDE_PEERING": "e", "EBBTIDE_PEERING_LIFETIME": "ten"}, "EBBTIDE_PEERING_LIFETIME"),
        ({"EBBTIDE_PEERING": "e", "EBBTIDE_PEERING_LIFETIME": "1"}, "EBBTIDE_PEERING_LIFETIME=1"),
        ({"EBBTIDE_PEERING": "e", "EBBTIDE_PEERING_NAMESPACES": "a,B!"}, "'B!'"),
    ],
)
def test_bad_settings_name_the_variable(env, named):
    with pytest.raises(PeeringConfigError, match=named.replace("(", r"\(")):
        from_env(env)


def test_the_peering_objects():
    p = Peering("ebbtide", 10, ())
    assert peering_object(p, None) == {
        "apiVersion": "kopf.dev/v1",
        "kind": "ClusterKopfPeering",
        "metadata": {"name": "ebbtide"},
    }
    assert peering_object(p, "team-a")["kind"] == "KopfPeering"
    assert peering_object(p, "team-a")["metadata"]["namespace"] == "team-a"
