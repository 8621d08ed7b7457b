"""Status figures, conditions and the write-skipping rule. Pure."""

from __future__ import annotations

import math

import pytest
from ebbtide_operator import status
from ebbtide_operator.policy import Decision, Observation, PolicyState


def obs(**kw) -> Observation:
    base = dict(
        now=0.0,
        backlog=1200,
        in_flight=8,
        oldest_age_s=95.4,
        arrival_rate=12.3456,
        completion_rate=10.0,
        replicas=2,
        ready_replicas=2,
        service_rate=3.14159,
    )
    base.update(kw)
    return Observation(**base)


def decision(replicas=6, drain=95.2) -> Decision:
    return Decision(replicas=replicas, reason="r", state=PolicyState(), drain_seconds=drain)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (math.inf, "∞"),
        (0, "0s"),
        (44.6, "45s"),
        (95, "1m35s"),
        (120, "2m"),
        (7380, "2h3m"),
        (90000, "1d1h"),
    ],
)
def test_format_duration(seconds, text):
    assert status.format_duration(seconds) == text


def test_figures_are_rounded_and_summarised():
    fig = status.figures(obs(), decision(), replicas=2, ready=1)
    assert fig["backlog"] == 1200 and fig["inFlight"] == 8
    assert fig["oldestAgeSeconds"] == 95.0 and fig["oldestAge"] == "1m35s"
    assert fig["arrivalRate"] == 12.35 and fig["serviceRate"] == 3.14
    assert fig["drainSeconds"] == 95.0 and fig["drain"] == "1m35s"
    assert fig["replicasSummary"] == "1/6" and fig["desiredReplicas"] == 6


def test_unknown_service_rate_and_infinite_drain():
    fig = status.figures(obs(service_rate=None), decision(drain=math.inf), 0, 0)
    assert fig["serviceRate"] is None and fig["drainSeconds"] is None and fig["drain"] == "∞"


def by_type(conditions):
    return {c["type"]: c for c in conditions}


def test_all_good():
    c = by_type(status.conditions(status.Health(), replicas=3, ready=3))
    assert list(c) == [
        "Ready",
        "BrokerReady",
        "WorkersReady",
        "ScalingActive",
        "Degraded",
        "Durable",
        "Encrypted",
    ]
    assert c["Ready"]["status"] == "True" and c["Degraded"]["status"] == "False"
    assert c["Encrypted"]["status"] == "True" and c["Encrypted"]["reason"] == "GeneratedCA"
    assert c["ScalingActive"]["reason"] == "BacklogTime"
    assert c["Durable"]["status"] == "True" and c["Durable"]["reason"] == "Persistent"


def test_persistence_opt_out_is_visible_but_not_degraded():
    c = by_type(status.conditions(status.Health(persistence_disabled=True), 3, 3))
    assert c["Durable"]["status"] == "False" and c["Durable"]["reason"] == "PersistenceDisabled"
    assert "loses every queued task" in c["Durable"]["message"]
    assert c["Degraded"]["status"] == "False" and c["Ready"]["status"] == "True"


def test_an_evicting_broker_is_degraded_naming_the_policy():
    c = by_type(status.conditions(status.Health(eviction_policy="allkeys-lru"), 3, 3))
    assert c["Degraded"]["status"] == "True" and c["Degraded"]["reason"] == "BrokerEvicts"
    assert "allkeys-lru" in c["Degraded"]["message"] and "noeviction" in c["Degraded"]["message"]
    assert c["Durable"]["reason"] == "BrokerEvicts"
    assert c["Ready"]["status"] == "True", "it still works: degraded, not down"


def test_external_brokers_own_their_durability():
    c = by_type(status.conditions(status.Health(external_broker=True), 3, 3))
    assert c["Durable"] == {
        "type": "Durable",
        "status": "True",
        "reason": "ExternalBroker",
        "message": "durability is the external broker's own setting",
    }


def test_broker_unreachable_is_degraded_and_not_ready():
    c = by_type(status.conditions(status.Health(broker_error="ConnectionError: refused"), 3, 3))
    assert c["Degraded"]["status"] == "True" and c["Degraded"]["reason"] == "BrokerUnreachable"
    assert c["Ready"]["status"] == "False" and c["Ready"]["reason"] == "BrokerUnreachable"
    assert c["BrokerReady"]["message"] == "ConnectionError: refused"
    assert c["ScalingActive"]["status"] == "False"


def test_workers_starting_and_scaled_to_zero_and_paused():
    c = by_type(status.conditions(status.Health(), replicas=4, ready=1))
    assert c["WorkersReady"]["reason"] == "ReplicasStarting" and c["Ready"]["status"] == "False"
    c = by_type(status.conditions(status.Health(paused=True), replicas=0, ready=0))
    assert c["WorkersReady"]["reason"] == "ScaledToZero" and c["Ready"]["status"] == "True"
    assert c["ScalingActive"]["reason"] == "Paused"


def test_transition_time_changes_only_on_flip():
    first = status.merge_conditions(None, status.conditions(status.Health(), 1, 1), "T1")
    same = status.merge_conditions(first, status.conditions(status.Health(), 2, 2), "T2")
    assert all(c["lastTransitionTime"] == "T1" for c in same)
    flipped = by_type(
        status.merge_conditions(
            same, status.conditions(status.Health(broker_error="x"), 2, 2), "T3"
        )
    )
    assert flipped["Degraded"]["lastTransitionTime"] == "T3"
    assert flipped["WorkersReady"]["lastTransitionTime"] == "T1"


def test_write_only_when_something_visible_changed():
    a = {
        "backlog": 1,
        "conditions": [],
        "policyState": {"recommendations": [[1, 2]], "idle_since": None},
    }
    assert status.needs_write(None, a, now=0, last_write_at=None)
    assert not status.needs_write(a, dict(a), now=5, last_write_at=0)
    assert status.needs_write(a, {**a, "backlog": 2}, now=5, last_write_at=0)
    window_moved = {
        **a,
        "policyState": {"recommendations": [[6, 2]], "idle_since": None, "lastPollTime": 5},
    }
    assert not status.needs_write(a, window_moved, now=5, last_write_at=0)
    assert status.needs_write(a, window_moved, now=31, last_write_at=0)
    idle_started = {**a, "policyState": {"recommendations": [[1, 2]], "idle_since": 5}}
    assert status.needs_write(a, idle_started, now=5, last_write_at=0)


def test_policy_error_is_degraded_but_broker_and_workers_stay_ready():
    c = by_type(status.conditions(status.Health(policy_error="policy error: ValueError: x"), 2, 2))
    assert (
        c["Degraded"]["reason"] == "PolicyError" and c["ScalingActive"]["reason"] == "PolicyError"
    )
    assert c["Ready"]["status"] == "True"


@pytest.mark.parametrize(
    "tls, encrypted",
    [
        (status.TLS_GENERATED, "True"),
        (status.TLS_CERT_MANAGER, "True"),
        (status.TLS_EXTERNAL, "True"),
        (status.TLS_DISABLED, "False"),
        (status.TLS_EXTERNAL_PLAIN, "False"),
        (status.TLS_UNKNOWN, "False"),
    ],
)
def test_encrypted_condition_says_how_the_broker_is_reached(tls, encrypted):
    c = by_type(status.conditions(status.Health(tls=tls), replicas=1, ready=1))
    assert c["Encrypted"]["status"] == encrypted and c["Encrypted"]["reason"] == tls
    assert c["Ready"]["status"] == "True"  # plain text is a choice, not a failure
    if tls == status.TLS_DISABLED:
        assert "spec.broker.tls.enabled is false" in c["Encrypted"]["message"]
