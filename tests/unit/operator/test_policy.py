"""The backlog-time policy, example by example (pure: no broker, no clock)."""

from __future__ import annotations

import json

from ebbtide_operator.policy import (
    BacklogTimePolicy,
    Observation,
    PolicyState,
    QueueObservation,
    ScalingSpec,
    decide,
)

SPEC = ScalingSpec(min_replicas=0, max_replicas=50, target_backlog_seconds=30.0)


def obs(**kw) -> Observation:
    base = dict(
        now=1000.0,
        backlog=0,
        in_flight=0,
        oldest_age_s=0.0,
        arrival_rate=0.0,
        completion_rate=0.0,
        replicas=1,
        ready_replicas=1,
        service_rate=1.0,
    )
    base.update(kw)
    return Observation(**base)


def test_burst_scales_to_drain_within_target():
    d = decide(obs(backlog=1200, replicas=2, ready_replicas=2), SPEC, PolicyState())
    assert d.replicas == 40  # 1200 / 30 s / 1 task/s
    assert d.reason == "backlog 1200, drain 600s > target 30s"
    assert d.drain_seconds == 600.0 and not d.degraded


def test_arrivals_and_backlog_add_up():
    d = decide(obs(backlog=300, arrival_rate=5.0), SPEC, PolicyState())
    assert d.replicas == 15  # (5 + 300/30) / 1


def test_cold_start_uses_initial_task_seconds():
    spec = ScalingSpec(max_replicas=50, initial_task_seconds=2.0, concurrency=4)
    d = decide(obs(backlog=600, service_rate=None), spec, PolicyState())
    assert d.replicas == 10  # mu = 4 / 2 s = 2 tasks/s per replica; 600/30/2


def test_old_task_means_behind():
    young = decide(obs(backlog=300, oldest_age_s=0.0), SPEC, PolicyState())
    old = decide(obs(backlog=300, oldest_age_s=20.0), SPEC, PolicyState())
    very_old = decide(obs(backlog=300, oldest_age_s=300.0), SPEC, PolicyState())
    assert young.replicas == 10
    assert old.replicas == 15  # past T/2 the deadline shrinks: 2 * (30 - 20) = 20 s
    assert very_old.replicas == 40  # the floor: T/4 = 7.5 s
    assert very_old.reason == "backlog 300, oldest task 300s > target 30s"


def test_starting_pods_count_as_capacity():
    first = decide(obs(backlog=1200, replicas=1, ready_replicas=1), SPEC, PolicyState())
    # Next poll: the 40 pods are still starting, the backlog is unchanged.
    again = decide(obs(now=1005.0, backlog=1200, replicas=40, ready_replicas=1), SPEC, first.state)
    assert again.replicas == 40


def test_queues_use_their_own_target_and_sum():
    queues = (
        QueueObservation("fast", 100, 0, 0.0, 0.0, 10.0),
        QueueObservation("slow", 600, 0, 0.0, 0.0, 300.0),
    )
    d = decide(obs(backlog=700, queues=queues), SPEC, PolicyState())
    assert d.replicas == 12  # 100/10 + 600/300 = 12 tasks/s


def test_step_limit_bounds_scale_up():
    spec = ScalingSpec(max_replicas=50, max_scale_up_step=4)
    d = decide(obs(backlog=1200, replicas=2), spec, PolicyState())
    assert d.replicas == 6


def test_scale_down_waits_for_stabilization_window():
    spec = ScalingSpec(max_replicas=50, scale_down_stabilization_seconds=60.0)
    state = decide(obs(now=0.0, backlog=600, replicas=1), spec, PolicyState()).state
    t, replicas = 5.0, 20
    while t < 60.0:
        d = decide(obs(now=t, replicas=replicas, arrival_rate=2.0), spec, state)
        assert d.replicas == 20, t
        assert "stabilization" in d.reason
        state = d.state
        t += 5.0
    d = decide(obs(now=t, replicas=replicas, arrival_rate=2.0), spec, state)
    assert d.replicas < 20


def test_scale_to_zero_only_after_idle_period_and_back_within_one_poll():
    spec = ScalingSpec(
        max_replicas=50, scale_down_stabilization_seconds=10.0, scale_to_zero_idle_seconds=120.0
    )
    state, replicas, t = PolicyState(), 3, 0.0
    while t < 120.0:
        d = decide(obs(now=t, replicas=replicas), spec, state)
        assert d.replicas >= 1, t
        state, replicas, t = d.state, d.replicas, t + 5.0
    d = decide(obs(now=t, replicas=replicas), spec, state)
    assert d.replicas == 0 and "scaling to zero" in d.reason
    up = decide(obs(now=t + 5, replicas=0, ready_replicas=0, backlog=1), spec, d.state)
    assert up.replicas == 1


def test_in_flight_keeps_pods_and_blocks_scale_to_zero():
    spec = ScalingSpec(max_replicas=50, scale_to_zero_idle_seconds=0.0)
    d = decide(obs(in_flight=3, replicas=3), spec, PolicyState())
    assert d.replicas == 3


def test_unreachable_broker_holds_or_falls_back():
    blind = obs(replicas=7, broker_reachable=False)
    held = decide(blind, SPEC, PolicyState())
    assert held.replicas == 7 and held.degraded
    assert held.reason == "broker unreachable: holding 7 replicas"
    spec = ScalingSpec(max_replicas=50, fallback_replicas=3)
    fb = decide(blind, spec, PolicyState())
    assert fb.replicas == 3 and fb.degraded and "fallback" in fb.reason


def test_missing_service_rate_never_drops_to_zero():
    d = decide(obs(replicas=5, service_rate=None, backlog=10), SPEC, PolicyState())
    assert d.replicas >= 1


def test_paused_holds_within_bounds():
    spec = ScalingSpec(min_replicas=2, max_replicas=5, paused=True)
    assert decide(obs(replicas=4, backlog=10_000), spec, PolicyState()).replicas == 4
    assert decide(obs(replicas=9), spec, PolicyState()).replicas == 5


def test_clamped_to_min_and_max():
    spec = ScalingSpec(min_replicas=2, max_replicas=8)
    assert decide(obs(replicas=0, ready_replicas=0), spec, PolicyState()).replicas == 2
    capped = decide(obs(backlog=10_000), spec, PolicyState())
    assert capped.replicas == 8 and "capped at maxReplicas 8" in capped.reason


def test_arrival_rate_noise_is_smoothed_but_a_burst_is_seen_at_once():
    state = decide(obs(now=0.0, arrival_rate=10.0, replicas=10), SPEC, PolicyState()).state
    noisy = decide(obs(now=5.0, arrival_rate=11.0, replicas=10), SPEC, state)
    assert 10.0 < noisy.state.arrival_rate_smoothed < 11.0  # 55 arrivals vs 50 expected
    burst = decide(obs(now=5.0, arrival_rate=30.0, replicas=10), SPEC, state)
    assert burst.state.arrival_rate_smoothed == 30.0  # 150 vs 50: a real change
    assert burst.replicas == 30


def test_tolerance_skips_a_marginal_scale_up():
    # need = 9 + 6/30 = 9.2 replicas, within 10 % of the 9 running: no pod start
    assert decide(obs(arrival_rate=9.0, backlog=6, replicas=9), SPEC, PolicyState()).replicas == 9
    assert decide(obs(arrival_rate=9.0, backlog=60, replicas=9), SPEC, PolicyState()).replicas == 11


def test_mu_moves_with_the_number_of_completions():
    state = decide(obs(now=0.0, service_rate=1.0), SPEC, PolicyState()).state
    few = decide(obs(now=5.0, service_rate=2.0, completion_rate=0.4), SPEC, state)
    many = decide(obs(now=5.0, service_rate=2.0, completion_rate=40.0), SPEC, state)
    assert 1.0 < few.state.service_rate_smoothed < 1.05  # 2 completions: barely moves
    assert 1.95 < many.state.service_rate_smoothed < 2.0  # 200 completions: follows


def test_state_round_trips_through_json_and_survives_garbage():
    d = decide(obs(backlog=1200), SPEC, PolicyState())
    restored = PolicyState.from_dict(json.loads(json.dumps(d.state.to_dict())))
    assert restored == d.state
    assert PolicyState.from_dict(None) == PolicyState()
    assert PolicyState.from_dict({"recommendations": [["x"], [1, 2]], "idleSince": "no"}) == (
        PolicyState(recommendations=[(1.0, 2)])
    )


def test_callable_adapter_keeps_state():
    policy = BacklogTimePolicy()
    assert policy(obs(now=0.0, backlog=600), SPEC) == 20
    assert policy(obs(now=5.0, replicas=20), SPEC) == 20  # stabilization remembered
    assert policy.last is not None and policy.state.recommendations


def test_non_finite_rates_never_reach_the_persisted_state():
    d = decide(
        obs(arrival_rate=float("nan"), service_rate=float("inf"), backlog=30), SPEC, PolicyState()
    )
    assert d.replicas == 1
    json.dumps(d.state.to_dict(), allow_nan=False)


def delayed(next_due_in_s: float | None, **kw) -> Observation:
    queue = QueueObservation(
        name="q",
        backlog=kw.pop("backlog", 0),
        in_flight=0,
        oldest_age_s=0.0,
        arrival_rate=0.0,
        target_backlog_seconds=30.0,
        next_due_in_s=next_due_in_s,
    )
    return obs(queues=(queue,), **kw)


def test_a_delayed_task_wakes_one_worker_from_zero_before_it_comes_due():
    spec = ScalingSpec(min_replicas=0, max_replicas=5, poll_seconds=5.0)
    far = decide(delayed(60.0, replicas=0, ready_replicas=0), spec, PolicyState())
    assert far.replicas == 0, "nothing to do for a minute: no pod"
    soon = decide(delayed(4.0, replicas=0, ready_replicas=0), spec, far.state)
    assert soon.replicas == 1 and "comes due" in soon.reason


def test_a_delayed_task_due_soon_blocks_scale_to_zero():
    spec = ScalingSpec(
        min_replicas=0, max_replicas=5, poll_seconds=5.0, scale_to_zero_idle_seconds=0
    )
    assert decide(delayed(3.0, replicas=1), spec, PolicyState()).replicas == 1
    assert decide(delayed(600.0, replicas=1), spec, PolicyState()).replicas == 0
