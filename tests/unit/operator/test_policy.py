"""The backlog-time policy, example by example (pure: no broker, no clock)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from ebbtide_operator.policy import (
    BacklogTimePolicy,
    Observation,
    PolicyState,
    QueueObservation,
    ScalingSpec,
    decide,
)
from ebbtide_operator.policy_demand import backlog_ages, backlog_pods, starting_pods

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
        pod_startup_s=0.0,  # instant pods: the arithmetic below is B / T; start-up has its tests
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


def test_the_oldest_tasks_real_deadline_sizes_the_backlog():
    young = decide(obs(backlog=300, oldest_age_s=0.0), SPEC, PolicyState())
    old = decide(obs(backlog=300, oldest_age_s=20.0), SPEC, PolicyState())
    very_old = decide(obs(backlog=300, oldest_age_s=300.0), SPEC, PolicyState())
    assert young.replicas == 10  # 300 tasks to start within 30 s
    # Within the 10 s the oldest task has left: each pod starts 10 and, on its free
    # slot, one more at once (the last task on a slot only has to start): 300 / 11.
    assert old.replicas == 28
    assert very_old.replicas == 36  # late already: caught up within T/4 = 7.5 s (300 / 8.5)
    assert very_old.reason == "backlog 300, oldest task 300s > target 30s"


BURST_SPEC = ScalingSpec(max_replicas=50, concurrency=4, pod_startup_seconds=10.0)


QUIET = PolicyState(arrival_rate_smoothed=0.0, last_poll_time=995.0)  # nothing arrived before


def burst(**kw) -> Observation:
    """The issue's trace: 500 one-second tasks at once, 4 slots per pod, 10 s start-up."""
    base = dict(backlog=500, oldest_age_s=5.0, arrival_rate=100.0, service_rate=4.0)
    base.update(pod_startup_s=None, replicas=0, ready_replicas=0)
    base.update(kw)
    return obs(**base)


def test_a_bulk_burst_is_sized_from_its_work_and_the_startup():
    d = decide(burst(), BURST_SPEC, QUIET)
    # 25 s left for the oldest task, 10 of them starting: a new pod starts 4/s x 15 s
    # plus one task on each of its 4 slots at once, 64; 500 / 64 = 7.8.
    # (It used to be 30: lambda = 100/s for one poll counted as a stream on top.)
    assert d.replicas == 8
    # Five seconds later the 8 are still starting: they are counted with the 5 s they
    # still need, so the same burst asks for no more.
    again = decide(
        burst(now=1005.0, oldest_age_s=10.0, arrival_rate=0.0, replicas=8), BURST_SPEC, d.state
    )
    assert again.replicas == 8


def test_observed_startup_time_replaces_the_guess():
    guess = decide(burst(), BURST_SPEC, QUIET).replicas
    slow = decide(burst(pod_startup_s=18.0), BURST_SPEC, QUIET).replicas
    fast = decide(burst(pod_startup_s=0.0), BURST_SPEC, QUIET).replicas
    # 500 tasks at 4/s per pod plus 4 at once, over 25, 15 and (the T/4 floor) 7.5 s
    assert (fast, guess, slow) == (5, 8, 15)


def test_ready_pods_are_used_before_new_ones_are_started():
    # 4 ready pods start 4 * 4 * 25 = 400 of the 500 tasks; 100 more need 100 / 4 / 15.
    assert decide(burst(replicas=4, ready_replicas=4), BURST_SPEC, QUIET).replicas == 6


def test_pods_started_for_a_backlog_stay_until_it_shrinks():
    spec = ScalingSpec(max_replicas=20, target_backlog_seconds=10.0, pod_startup_seconds=10.0)
    first = decide(
        obs(backlog=40, pod_startup_s=None, replicas=0, ready_replicas=0), spec, PolicyState()
    )
    assert first.replicas == 12  # a new pod has only the T/4 floor: 40 / (2.5 + 1)
    # Ready now, the same backlog would need 4: held, as the load did not change.
    held = decide(obs(now=1005.0, backlog=40, replicas=12, ready_replicas=12), spec, first.state)
    assert held.replicas == 12
    shrunk = decide(obs(now=1010.0, backlog=30, replicas=12, ready_replicas=12), spec, held.state)
    assert shrunk.replicas == 4  # 30 / 10 s, and the tolerance as headroom


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


def test_stabilization_holds_what_arrivals_asked_for_not_a_drained_backlog():
    spec = ScalingSpec(max_replicas=50, scale_down_stabilization_seconds=60.0)
    state = decide(obs(now=0.0, backlog=600, arrival_rate=8.0, replicas=1), spec, PolicyState())
    assert state.replicas == 28  # 600 / 30 + 8
    # The backlog is drained, arrivals go on: down at once to what they need (+10 %).
    d = decide(obs(now=5.0, replicas=28, arrival_rate=8.0), spec, state.state)
    assert d.replicas == 9 and "suffice" in d.reason
    # Arrivals dip within Poisson noise: the window keeps the 9.
    state, t = d.state, 10.0
    while t < 60.0:
        d = decide(obs(now=t, replicas=9, arrival_rate=6.5), spec, state)
        assert d.replicas == 9, t
        state, t = d.state, t + 5.0
    assert "stabilization" in d.reason
    # A fall beyond noise is believed at once.
    gone = decide(obs(now=t, replicas=9, arrival_rate=1.0, in_flight=1), spec, state)
    assert gone.replicas == 2


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


def test_arrival_noise_is_smoothed_and_a_rise_believed_when_it_persists():
    state = decide(obs(now=0.0, arrival_rate=10.0, replicas=10), SPEC, PolicyState()).state
    noisy = decide(obs(now=5.0, arrival_rate=11.0, replicas=10), SPEC, state)
    assert 10.0 < noisy.state.arrival_rate_smoothed < 11.0  # 55 arrivals vs 50 expected
    # 150 vs 50: a real change, or a bulk send (then its backlog says it all): not yet.
    first = decide(obs(now=5.0, arrival_rate=30.0, replicas=10), SPEC, state)
    assert first.state.arrival_rate_smoothed == 10.0 and first.state.arrival_jump == 30.0
    second = decide(obs(now=10.0, arrival_rate=30.0, replicas=10), SPEC, first.state)
    assert second.state.arrival_rate_smoothed == 30.0 and second.replicas == 30
    # A fall is believed at once.
    fell = decide(obs(now=15.0, arrival_rate=2.0, replicas=30), SPEC, second.state)
    assert fell.state.arrival_rate_smoothed == 2.0 and fell.replicas == 3


def test_a_rise_is_confirmed_by_its_span_in_time_not_by_a_count_of_ticks():
    """Woken ticks come every quarter second while a burst lands on a queue with no ready
    worker. A 2 s bulk send at 100/s seen by eight of them is backlog, never a stream;
    the same rate still there after 2 * poll_seconds is one."""
    state = decide(obs(now=0.0, replicas=0, ready_replicas=0), SPEC, PolicyState()).state
    now = 0.0
    for _ in range(8):
        now += 0.25
        state = decide(
            obs(now=now, arrival_rate=100.0, replicas=0, ready_replicas=0), SPEC, state
        ).state
        assert state.arrival_rate_smoothed == 0.0 and state.arrival_jump == pytest.approx(100.0)
    assert state.jump_since == 0.0
    quiet = decide(obs(now=now + 0.25, replicas=0, ready_replicas=0), SPEC, state).state
    assert quiet.arrival_jump is None and quiet.arrival_rate_smoothed == pytest.approx(0.0)
    # Still arriving: at 10 s (2 polls' worth) the mean rate over the span is believed.
    while now < 10.0 - 1e-9:
        now += 0.25
        state = decide(
            obs(now=now, arrival_rate=100.0, replicas=0, ready_replicas=0), SPEC, state
        ).state
    assert state.arrival_jump is None and state.arrival_rate_smoothed == pytest.approx(100.0)


def test_tolerance_skips_a_marginal_scale_up():
    # need = 9 + 6/30 = 9.2 replicas, within 10 % of the 9 running: no pod start
    assert decide(obs(arrival_rate=9.0, backlog=6, replicas=9), SPEC, PolicyState()).replicas == 9
    assert decide(obs(arrival_rate=9.0, backlog=60, replicas=9), SPEC, PolicyState()).replicas == 11


def test_mu_moves_with_the_number_of_completions():
    state = decide(obs(now=0.0, service_rate=1.0), SPEC, PolicyState()).state
    few = decide(obs(now=5.0, service_rate=2.0, completion_rate=0.4, backlog=1), SPEC, state)
    many = decide(obs(now=5.0, service_rate=2.0, completion_rate=40.0, backlog=1), SPEC, state)
    assert 1.0 < few.state.service_rate_smoothed < 1.05  # 2 completions: barely moves
    # 200 completions (serviceSmoothingTasks 100): a rise at half the pace of a fall
    assert 1.6 < many.state.service_rate_smoothed < 1.65  # weight 1 - 1/e
    down = decide(obs(now=5.0, service_rate=0.5, completion_rate=40.0, backlog=1), SPEC, state)
    assert 0.56 < down.state.service_rate_smoothed < 0.57  # weight 1 - 1/e^2
    # Nothing queued or arriving: these are a burst's last (longest) tasks; mu stays.
    tail = decide(obs(now=5.0, service_rate=0.5, completion_rate=40.0), SPEC, state)
    assert tail.state.service_rate_smoothed == 1.0


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
    assert policy(obs(now=5.0, replicas=20, backlog=600), SPEC) == 20  # flap guard remembered
    assert policy.last is not None and policy.state.up_backlog == 600


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


def test_backlog_pods_fills_the_fleet_best_first():
    inf = float("inf")
    fleet = ((2.0, 30.0, 0.0), (3.0, 25.0, 0.0), (inf, 20.0, 0.0))  # ready, starting, new
    assert backlog_pods(0, 1.0, fleet) == 0.0
    assert backlog_pods(30, 1.0, fleet) == 1.0  # one ready pod's 30 s will do
    assert backlog_pods(60 + 75, 1.0, fleet) == 5.0  # the ready and starting pods
    assert backlog_pods(60 + 75 + 40, 1.0, fleet) == 7.0  # and two new ones
    assert backlog_pods(60 + 75 + 40, 2.0, fleet) == pytest.approx(2 + 27.5 / 25)


def test_the_last_task_on_each_free_slot_only_has_to_start():
    """A slot free now starts one task at once and mu * D more in D seconds; a busy one
    only the mu * D. Four free slots per new pod, 20 s at 1 task/s per pod: 24 each."""
    inf = float("inf")
    assert backlog_pods(48, 1.0, ((0.0, 30.0, 0.0), (inf, 20.0, 4.0))) == 2.0
    assert backlog_pods(48, 1.0, ((0.0, 30.0, 0.0), (inf, 20.0, 0.0))) == 2.4
    # The fleet a decision builds: 2 ready pods of 4 slots with 5 tasks running: 3 free.
    spec = ScalingSpec(max_replicas=50, concurrency=4)
    o = obs(backlog=10, in_flight=5, replicas=2, ready_replicas=2, pod_startup_s=10.0)
    from ebbtide_operator.policy_demand import fleet_horizons

    ready, new = fleet_horizons(o, spec, PolicyState(), 30.0, 30.0)
    assert ready == (2.0, 30.0, 1.5) and new == (inf, 20.0, 4.0)


def test_mu_while_a_backlog_saturates_the_slots_is_completions_per_busy_slot_second():
    """Little's law, not the service time of the tasks that completed: the operator's mu
    (here 3/s, from a burst's first and shortest tasks) would plan a third of the pods."""
    spec = ScalingSpec(max_replicas=50, service_smoothing_tasks=0)  # no EWMA: the sample
    first = decide(
        obs(now=0.0, backlog=500, in_flight=10, replicas=10, ready_replicas=10), spec, PolicyState()
    )
    assert first.state.busy_slots == 10.0
    # 10 slots busy for 5 s, 25 completions: 0.5 tasks/s per slot.
    d = decide(
        obs(
            now=5.0,
            backlog=475,
            in_flight=10,
            replicas=10,
            ready_replicas=10,
            completion_rate=5.0,
            service_rate=3.0,
        ),
        spec,
        first.state,
    )
    assert d.state.service_rate_smoothed == pytest.approx(0.5)
    # Pods that became Ready in between count from their Ready time: 5 pods added at 0
    # with a 10 s start-up were Ready at 10, so 5 slots x 5 s + 5 slots x 2.5 s.
    s0 = PolicyState(
        last_poll_time=7.5, busy_slots=5.0, starts=[(0.0, 5)], service_rate_smoothed=1.0
    )
    d = decide(
        obs(
            now=12.5,
            backlog=100,
            in_flight=10,
            replicas=10,
            ready_replicas=10,
            completion_rate=2.0,
            pod_startup_s=10.0,
        ),
        spec,
        s0,
    )
    assert d.state.service_rate_smoothed == pytest.approx(10.0 / (5 * 5.0 + 5 * 2.5))


def test_starting_pods_are_timed_from_their_own_scale_up():
    state = PolicyState(starts=[(0.0, 4), (6.0, 2)], last_scale_time=6.0)
    # 8 pods, 3 ready: the 5 starting are the newest (2 from t = 6, 3 of the 4 from t = 0).
    o = obs(now=8.0, replicas=8, ready_replicas=3, pod_startup_s=10.0)
    assert starting_pods(o, state, 10.0) == [(3, 2.0), (2, 8.0)]
    # Untracked ones (a restored state) are taken to have started at the last change.
    o = obs(now=8.0, replicas=10, ready_replicas=3, pod_startup_s=10.0)
    assert starting_pods(o, state, 10.0) == [(1, 8.0), (4, 2.0), (2, 8.0)]


def test_a_burst_landing_over_seconds_is_sized_by_each_task_s_own_deadline():
    """200 tasks over 5 s: the last ones have 5 s more than the first. The recorded
    arrivals say when each part came; the oldest task keeps its observed age."""
    q = obs(now=10.0, backlog=200, oldest_age_s=5.0, replicas=0, ready_replicas=0)
    state = PolicyState(arrivals=[(5.0, 100), (7.5, 100)], last_poll_time=10.0)
    assert backlog_ages(q, state, _one(q)) == [(5.0, 1), (5.0, 99), (2.5, 100)]
    # More backlog than recorded arrivals (tasks came due from a delay): all as oldest.
    more = obs(now=10.0, backlog=300, oldest_age_s=5.0)
    assert backlog_ages(more, state, _one(more)) is None
    spec = ScalingSpec(max_replicas=100)
    with_ages = decide(replace(q, pod_startup_s=10.0), spec, state)
    without = decide(replace(q, pod_startup_s=10.0), spec, replace(state, arrivals=[]))
    # By 25 s a new pod starts 15 + 1 tasks (13 pods); the newer half has 17.5 s (11).
    assert without.replicas == 13 and with_ages.replicas == 11


def _one(o: Observation) -> QueueObservation:
    return QueueObservation(
        name="",
        backlog=o.backlog,
        in_flight=o.in_flight,
        oldest_age_s=o.oldest_age_s,
        arrival_rate=o.arrival_rate,
        target_backlog_seconds=30.0,
    )


def test_no_pod_is_started_that_would_be_ready_after_the_pods_there_drained_the_backlog():
    """70 tasks, 6.7 s to the deadline, 15 ready pods at 0.5 tasks/s and a 10 s start-up:
    the T/4 floor would credit a new pod with 7.5 s it cannot have (it is Ready at 10 s,
    after the 15 pods started all 70 at 7.5/s). None is started; with 90 tasks they
    are not enough by then, and new pods are started to catch up."""
    spec = ScalingSpec(max_replicas=50)
    base = dict(oldest_age_s=23.3, replicas=15, ready_replicas=15, in_flight=15)
    base.update(service_rate=0.5, pod_startup_s=10.0)
    assert decide(obs(backlog=70, **base), spec, PolicyState()).replicas == 15
    assert decide(obs(backlog=90, **base), spec, PolicyState()).replicas > 15


def test_the_state_s_histories_stay_short_and_merge_towards_caution():
    from ebbtide_operator.policy_demand import MAX_HISTORY, record_arrivals, record_starts

    state = PolicyState(
        starts=[(float(i), 1) for i in range(MAX_HISTORY)],
        arrivals=[(float(i), 2) for i in range(MAX_HISTORY)],
        last_poll_time=float(MAX_HISTORY),
    )
    starts = record_starts(state, 40.0, 5, 7, 100.0)
    assert len(starts) == MAX_HISTORY and starts[0] == (1.0, 2)  # timed by the later one
    assert starts[-1] == (40.0, 2)
    arrivals = record_arrivals(obs(now=40.0, arrival_rate=1.0), state, 100.0)
    assert len(arrivals) == MAX_HISTORY and arrivals[0] == (0.0, 4)  # the earlier one
    assert arrivals[-1] == (float(MAX_HISTORY), 8)


DRAIN_SPEC = ScalingSpec(max_replicas=50, concurrency=4, pod_startup_seconds=10.0)


def draining(**kw) -> Observation:
    """A burst half drained: 4 Ready pods, every slot busy, nothing arriving."""
    base = dict(backlog=40, in_flight=16, oldest_age_s=20.0, service_rate=4.0, replicas=4)
    base.update(ready_replicas=4)
    base.update(kw)
    return obs(**base)


def test_a_draining_burst_lets_pods_go_once_fewer_start_it_in_time():
    d = decide(draining(), DRAIN_SPEC, QUIET)
    # 10 s left for the oldest: 40 / (0.8 x 4/s x 10 s) = 1.25 pods, 1.4 with the
    # tolerance: 2, though all 16 slots are busy (the two let go finish their tasks).
    assert d.replicas == 2
    assert d.reason == "backlog 40: 2 ready replicas start it by its deadline"
    # With nothing queued and nothing arriving, every pod may go: they finish the tasks
    # they run, and the TaskQueue is at zero the moment those end.
    last = decide(draining(backlog=0, oldest_age_s=0.0), DRAIN_SPEC, QUIET)
    assert last.replicas == 0
    assert last.reason == "backlog 0, 16 running: 0 replicas while they finish"


def test_the_last_tasks_finish_on_pods_let_go_without_a_new_one():
    # At zero with tasks still running on the pods let go: no pod is started for them.
    done = draining(backlog=0, oldest_age_s=0.0, in_flight=3, replicas=0, ready_replicas=0)
    assert decide(done, DRAIN_SPEC, QUIET).replicas == 0
    # Anything queued, arriving or due soon still wakes a worker.
    assert decide(replace(done, backlog=1, oldest_age_s=0.1), DRAIN_SPEC, QUIET).replicas >= 1
    assert decide(replace(done, arrival_rate=1.0), DRAIN_SPEC, QUIET).replicas >= 1


def test_one_pod_stays_while_the_last_tasks_run_unless_zero_is_due_at_once():
    # A TaskQueue that keeps a warm pod (scaleToZeroIdleSeconds > 0) or a floor keeps one.
    for spec in (
        replace(DRAIN_SPEC, scale_to_zero_idle_seconds=30.0),
        replace(DRAIN_SPEC, min_replicas=1),
    ):
        last = decide(draining(backlog=0, oldest_age_s=0.0), spec, QUIET)
        assert last.replicas == 1
        assert last.reason == "backlog 0, 16 running: 1 replicas while they finish"
        idle_at_zero = draining(
            backlog=0, oldest_age_s=0.0, in_flight=3, replicas=0, ready_replicas=0
        )
        assert decide(idle_at_zero, spec, QUIET).replicas == 1  # the in-flight floor, as before


def test_no_drain_down_when_late_arriving_or_still_starting():
    # Already late: the T/4 catch-up is not something a scale-down may lean on.
    assert decide(draining(oldest_age_s=31.0), DRAIN_SPEC, QUIET).replicas == 4
    # Tasks still arriving: the stream term and the busy pods decide, as before.
    assert decide(draining(arrival_rate=1.0), DRAIN_SPEC, QUIET).replicas == 4
    # A pod still starting: its plan counted the start-up; the flap guard's case.
    assert decide(draining(ready_replicas=3), DRAIN_SPEC, QUIET).replicas == 4
    # The backlog that started these pods has not shrunk: the flap guard holds them.
    guarded = replace(QUIET, up_backlog=40)
    assert decide(draining(), DRAIN_SPEC, guarded).replicas == 4


def test_drain_down_is_monotone_in_the_backlog():
    counts = [decide(draining(backlog=b), DRAIN_SPEC, QUIET).replicas for b in (0, 1, 40, 80, 200)]
    assert counts == sorted(counts) and counts[0] == 0
