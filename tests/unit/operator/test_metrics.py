"""Operator metrics: Prometheus names, one series per TaskQueue and queue, dropped when
the TaskQueue (or a queue) goes away."""

from __future__ import annotations

import re

from ebbtide.buildinfo import version
from ebbtide_operator.metrics import AGGREGATE_QUEUE, OperatorMetrics
from ebbtide_operator.policy import Decision, Observation, PolicyState, QueueObservation
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

LABELS = {"namespace": "ns", "taskqueue": "a"}


def queue(name: str, **kw: float) -> QueueObservation:
    fields = {
        "backlog": 10,
        "in_flight": 2,
        "oldest_age_s": 4.5,
        "arrival_rate": 1.5,
        "target_backlog_seconds": 30.0,
        "delayed": 7,
        "due": 3,
        "dead": 1,
    }
    return QueueObservation(name=name, **{**fields, **kw})


def observation(*queues: QueueObservation) -> Observation:
    return Observation(
        now=0,
        backlog=sum(q.backlog for q in queues),
        in_flight=sum(q.in_flight for q in queues),
        oldest_age_s=max((q.oldest_age_s for q in queues), default=0.0),
        arrival_rate=sum(q.arrival_rate for q in queues),
        completion_rate=1.0,
        replicas=1,
        ready_replicas=1,
        service_rate=0.5,
        queues=queues,
    )


def test_per_queue_and_per_taskqueue_series_and_forget():
    m = OperatorMetrics()
    obs = observation(queue("fast", oldest_age_s=40.0), queue("slow", target_backlog_seconds=300))
    decision = Decision(replicas=14, reason="r", state=PolicyState(), drain_seconds=30.0)
    m.observe("ns", "a", obs, decision, 10, 1, broker_up=True, min_replicas=0, max_replicas=10)
    m.scaled("ns", "a", 1, 10)
    m.error("ns", "a", "broker")
    get = m.registry.get_sample_value
    fast, slow = {**LABELS, "queue": "fast"}, {**LABELS, "queue": "slow"}
    assert get("ebbtide_taskqueue_backlog_tasks", fast) == 10
    assert get("ebbtide_taskqueue_oldest_task_age_seconds", fast) == 40.0
    assert get("ebbtide_taskqueue_delayed_tasks", slow) == 7
    assert get("ebbtide_taskqueue_due_tasks", slow) == 3
    assert get("ebbtide_taskqueue_dead_tasks", slow) == 1
    assert get("ebbtide_taskqueue_in_flight_tasks", slow) == 2
    assert get("ebbtide_taskqueue_target_backlog_seconds", slow) == 300
    assert get("ebbtide_taskqueue_arrival_rate_tasks_per_second", fast) == 1.5
    assert get("ebbtide_taskqueue_service_rate_tasks_per_second", LABELS) == 0.5
    assert get("ebbtide_taskqueue_completion_rate_tasks_per_second", LABELS) == 1.0
    assert get("ebbtide_taskqueue_drain_seconds", LABELS) == 30.0
    assert get("ebbtide_taskqueue_desired_replicas", LABELS) == 10  # clamped to max
    assert get("ebbtide_taskqueue_max_replicas", LABELS) == 10
    assert get("ebbtide_taskqueue_min_replicas", LABELS) == 0
    assert get("ebbtide_taskqueue_scale_events_total", {**LABELS, "direction": "up"}) == 1
    assert get("ebbtide_taskqueue_reconcile_errors_total", {**LABELS, "stage": "broker"}) == 1

    m.observe("ns", "a", observation(queue("fast")), decision, 10, 1, broker_up=True)
    assert get("ebbtide_taskqueue_backlog_tasks", slow) is None  # queue left the spec
    assert get("ebbtide_taskqueue_backlog_tasks", fast) == 10

    m.observe("ns", "b", obs, decision, 1, 1, broker_up=True)
    m.forget("ns", "a")
    assert get("ebbtide_taskqueue_backlog_tasks", fast) is None
    assert get("ebbtide_taskqueue_replicas", LABELS) is None
    assert get("ebbtide_taskqueue_scale_events_total", {**LABELS, "direction": "up"}) is None
    assert get("ebbtide_taskqueue_backlog_tasks", {**fast, "taskqueue": "b"}) == 10


def test_an_observation_without_queues_is_one_aggregate_series():
    m = OperatorMetrics()
    obs = observation()
    obs = Observation(**{**obs.__dict__, "backlog": 12, "oldest_age_s": 3.0})
    m.observe("ns", "a", obs, None, replicas=1, ready=1, broker_up=True)
    labels = {**LABELS, "queue": AGGREGATE_QUEUE}
    assert m.registry.get_sample_value("ebbtide_taskqueue_backlog_tasks", labels) == 12
    assert m.registry.get_sample_value("ebbtide_taskqueue_oldest_task_age_seconds", labels) == 3


def test_unreachable_broker_keeps_last_figures_and_marks_down():
    m = OperatorMetrics()
    m.observe("ns", "a", observation(queue("q")), None, 2, 2, broker_up=True)
    m.observe("ns", "a", None, None, replicas=2, ready=2, broker_up=False)
    get = m.registry.get_sample_value
    assert get("ebbtide_taskqueue_broker_up", LABELS) == 0
    assert get("ebbtide_taskqueue_replicas", LABELS) == 2
    assert get("ebbtide_taskqueue_backlog_tasks", {**LABELS, "queue": "q"}) == 10


def test_names_follow_the_prometheus_conventions():
    """Subsystem prefixes, `_total` on every counter (and only there), units on gauges,
    build info and the process collector in the operator's registry."""
    m = OperatorMetrics()
    m.observe("ns", "a", observation(queue("q")), None, 1, 1, broker_up=True)
    m.scaled("ns", "a", 0, 1)
    m.error("ns", "a", "tick")
    m.ticks_skipped.inc()
    families = list(text_string_to_metric_families(generate_latest(m.registry).decode()))
    # prometheus_client's text format adds a `<counter>_created` gauge per counter.
    ours = [
        f for f in families if f.name.startswith("ebbtide_") and not f.name.endswith("_created")
    ]
    assert len(ours) >= 20
    units = re.compile(r"_(seconds|tasks|tasks_per_second|replicas|total|info|up)$")
    for family in ours:
        assert re.match(r"ebbtide_(taskqueue|operator|build)_", family.name), family.name
        names = {s.name for s in family.samples}
        if family.type == "counter":
            assert f"{family.name}_total" in names, family.name
        elif family.type == "gauge":
            assert units.search(family.name), family.name
            assert not family.name.endswith("_total"), family.name
    info = m.registry.get_sample_value(
        "ebbtide_build_info",
        {"component": "operator", "version": version(), "python_version": _python()},
    )
    assert info == 1
    assert version() != "unknown"  # the venv installs ebbtide
    assert m.registry.get_sample_value("process_cpu_seconds_total") is not None
    assert any(f.name == "python_info" for f in families)


def _python() -> str:
    import platform

    return platform.python_version()
