"""Operator metrics: one series per TaskQueue, dropped when it is deleted."""

from __future__ import annotations

from ebbtide_operator.metrics import OperatorMetrics
from ebbtide_operator.policy import Decision, Observation, PolicyState


def test_series_per_taskqueue_and_forget():
    m = OperatorMetrics()
    obs = Observation(
        now=0,
        backlog=12,
        in_flight=3,
        oldest_age_s=4.5,
        arrival_rate=2.0,
        completion_rate=1.0,
        replicas=1,
        ready_replicas=1,
        service_rate=0.5,
    )
    decision = Decision(replicas=4, reason="r", state=PolicyState(), drain_seconds=30.0)
    m.observe("ns", "a", obs, decision, replicas=4, ready=1, broker_up=True)
    m.scaled("ns", "a", 1, 4)
    m.error("ns", "a", "broker")
    get = m.registry.get_sample_value
    labels = {"namespace": "ns", "taskqueue": "a"}
    assert get("ebbtide_backlog_tasks", labels) == 12
    assert get("ebbtide_oldest_task_age_seconds", labels) == 4.5
    assert get("ebbtide_drain_seconds", labels) == 30.0
    assert get("ebbtide_desired_replicas", labels) == 4
    assert get("ebbtide_scale_events_total", {**labels, "direction": "up"}) == 1
    assert get("ebbtide_reconcile_errors_total", {**labels, "stage": "broker"}) == 1
    m.forget("ns", "a")
    assert get("ebbtide_backlog_tasks", labels) is None
    assert get("ebbtide_scale_events_total", {**labels, "direction": "up"}) is None


def test_unreachable_broker_keeps_last_figures_and_marks_down():
    m = OperatorMetrics()
    m.observe("ns", "b", None, None, replicas=2, ready=2, broker_up=False)
    labels = {"namespace": "ns", "taskqueue": "b"}
    assert m.registry.get_sample_value("ebbtide_broker_up", labels) == 0
    assert m.registry.get_sample_value("ebbtide_replicas", labels) == 2
