"""The forecast of periodic bulk bursts (policy_forecast), and how decide uses it. Pure."""

from __future__ import annotations

from dataclasses import replace

from ebbtide_operator.policy import (
    BacklogTimePolicy,
    Observation,
    PolicyState,
    ScalingSpec,
    decide,
)
from ebbtide_operator.policy_forecast import (
    bulk_due,
    forecast,
    forecast_floor,
    prewarm_pods,
    track_bursts,
)
from ebbtide_operator.simulate import SimConfig, Task, simulate

SPEC = ScalingSpec(max_replicas=50, concurrency=4)  # T 30 s, polls of 5 s
EVERY_300 = [(0.0, 300, 2.0), (300.1, 280, 2.0), (600.0, 310, 2.0)]


def obs(now: float, **kw) -> Observation:
    base = dict(
        now=now,
        backlog=0,
        in_flight=0,
        oldest_age_s=0.0,
        arrival_rate=0.0,
        completion_rate=0.0,
        replicas=0,
        ready_replicas=0,
        service_rate=4.0,
        pod_startup_s=10.0,
    )
    base.update(kw)
    return Observation(**base)


def test_three_bulk_bursts_at_one_interval_forecast_the_next():
    f = forecast(EVERY_300, SPEC)
    assert f is not None
    assert f.onset == 900.0 and f.period == 300.0 and f.jitter == 5.0
    assert f.tasks == 280  # the smallest: pre-warming costs pods, a top-up only a poll


def test_no_forecast_without_a_period_of_bulk_bursts():
    assert forecast(EVERY_300[:2], SPEC) is None  # one interval says nothing
    uneven = [(0.0, 300, 2.0), (300.0, 300, 2.0), (612.0, 300, 2.0)]
    assert forecast(uneven, SPEC) is None  # intervals 300 and 312: 6 s from their mean
    stream = [(0.0, 1200, 60.0), (300.0, 1200, 60.0), (600.0, 1200, 60.0)]
    assert forecast(stream, SPEC) is None  # 60 s of arrivals: the arrival term's job
    assert forecast(EVERY_300, replace(SPEC, poll_seconds=0.5)) is None  # 2 s > 2 polls


def test_a_burst_opens_after_an_idle_tick_and_closes_at_the_next():
    idle_before = PolicyState(idle_since=0.0, last_poll_time=900.0)
    o = obs(905.0, backlog=200, oldest_age_s=4.5, arrival_rate=40.0)
    bursts, open_burst = track_bursts(o, SPEC, idle_before, idle=False, arrived=200)
    assert bursts == [] and open_burst == (900.5, 200, 905.0)  # onset: the oldest's arrival
    running = replace(idle_before, idle_since=None, burst=open_burst, last_poll_time=905.0)
    bursts, open_burst = track_bursts(obs(910.0, backlog=80), SPEC, running, False, 100)
    assert open_burst == (900.5, 300, 910.0)
    done = replace(running, burst=open_burst, last_poll_time=910.0)
    bursts, open_burst = track_bursts(obs(960.0), SPEC, done, idle=True, arrived=0)
    assert open_burst is None and bursts == [(900.5, 300, 9.5)]


def test_a_busy_queue_opens_no_burst():
    busy = PolicyState(idle_since=None, last_poll_time=900.0)
    o = obs(905.0, backlog=20, oldest_age_s=1.0, arrival_rate=4.0)
    assert track_bursts(o, SPEC, busy, idle=False, arrived=20) == ([], None)


def test_a_forecast_burst_that_does_not_come_drops_the_record():
    state = PolicyState(bursts=list(EVERY_300), idle_since=700.0, last_poll_time=905.0)
    assert track_bursts(obs(905.0), SPEC, state, idle=True, arrived=0)[0] == EVERY_300
    assert track_bursts(obs(910.0), SPEC, state, idle=True, arrived=0) == ([], None)
    # Seen at the tick after its window, it is still recorded (it opens now).
    late = obs(910.0, backlog=250, oldest_age_s=4.0, arrival_rate=50.0)
    bursts, open_burst = track_bursts(late, SPEC, state, idle=False, arrived=250)
    assert bursts == EVERY_300 and open_burst == (906.0, 250, 910.0)


def test_pods_are_prewarmed_at_the_tick_nearest_onset_minus_startup():
    def pods(now: float) -> int:
        return prewarm_pods(EVERY_300, None, SPEC, now, startup=10.0, mu=4.0)[0]

    # 280 tasks on pods Ready for 30 s: 4/s x 30 s + one per slot = 124 each -> 3 pods.
    assert [pods(t) for t in (885.0, 890.0, 895.0, 900.0, 905.0, 910.0)] == [0, 3, 3, 3, 3, 0]
    assert pods(887.5) == 0 and pods(887.6) == 3  # at most half a poll before onset - S
    assert prewarm_pods(EVERY_300, (900.0, 20, 901.0), SPEC, 900.0, 10.0, 4.0)[0] == 0


def test_bulk_due_spans_the_forecast_bursts_landing():
    assert not bulk_due(EVERY_300, SPEC, 894.0)
    assert bulk_due(EVERY_300, SPEC, 895.0) and bulk_due(EVERY_300, SPEC, 915.0)
    assert not bulk_due(EVERY_300, SPEC, 915.1)
    assert not bulk_due(EVERY_300[:2], SPEC, 600.0)


def test_prewarmed_pods_are_held_while_the_bursts_backlog_grows():
    state = PolicyState(bursts=list(EVERY_300), burst=(900.0, 40, 900.3), warm_backlog=40)
    grows = obs(900.6, backlog=120, oldest_age_s=0.6, replicas=3)
    assert forecast_floor(grows, SPEC, state, 10.0, 4.0) == (
        3,
        "backlog 120: holding the 3 replicas of a forecast burst",
        120,
    )
    shrinks = obs(915.0, backlog=100, oldest_age_s=15.0, replicas=3, ready_replicas=3)
    assert forecast_floor(shrinks, SPEC, replace(state, warm_backlog=300), 10.0, 4.0) == (
        0,
        None,
        None,
    )


def test_decide_prewarms_and_says_why():
    state = PolicyState(bursts=list(EVERY_300), idle_since=700.0, last_poll_time=885.0)
    d = decide(obs(890.0), SPEC, state)
    assert d.replicas == 3
    assert (
        d.reason
        == "forecast: a burst of 280 tasks every 300s is due in 10s: 3 replicas ready for it"
    )
    assert d.state.warm_backlog == 0
    assert PolicyState.from_dict(d.state.to_dict()) == d.state  # it lives in the status


def test_a_woken_tick_keeps_the_prewarmed_pods_it_counts_as_nearly_ready():
    """Pods Ready just after the onset: the woken ticks see them starting with a second
    left, and the backlog alone would ask for one pod; they stay."""
    state = PolicyState(
        bursts=list(EVERY_300),
        idle_since=700.0,
        arrival_rate_smoothed=0.0,
        last_poll_time=900.0,
        starts=[(890.5, 3)],
        warm_backlog=0,
        last_scale_time=890.5,
    )
    d = decide(obs(900.3, backlog=20, oldest_age_s=0.3, arrival_rate=60.0, replicas=3), SPEC, state)
    assert d.replicas == 3 and d.state.burst is not None
    d2 = decide(
        obs(900.6, backlog=60, oldest_age_s=0.6, arrival_rate=130.0, replicas=3), SPEC, d.state
    )
    assert (
        d2.replicas == 3 and d2.reason == "backlog 60: holding the 3 replicas of a forecast burst"
    )


def test_the_state_round_trips_the_record_and_tolerates_junk():
    state = PolicyState(bursts=list(EVERY_300), burst=(900.0, 12, 901.0), warm_backlog=7)
    assert PolicyState.from_dict(state.to_dict()) == state
    junk = {"bursts": [[1, 2], "x", [1.0, "a", 2.0], [0.0, 5, 1.0]], "burst": [1, 2]}
    assert PolicyState.from_dict(junk).bursts == [(0.0, 5, 1.0)]
    assert PolicyState.from_dict(junk).burst is None


def test_the_simulator_has_the_fourth_burst_s_pods_ready_when_it_lands():
    """The same path as the operator: the fourth of four bursts every 120 s lands on pods
    started before it; the first three woke the tick and started theirs after."""
    tasks = [Task(round(120.0 * k + 1.0 + 0.01 * i, 3), 1.0) for k in range(4) for i in range(200)]
    policy = BacklogTimePolicy()
    result = simulate(tasks, policy, SimConfig(concurrency=4))
    before = {s.t: s for s in result.samples}
    # 200 tasks on pods Ready for 30 s: 4/s x 30 s + 4 slots = 124 each -> 2 pods.
    assert before[350.0].replicas == 2 and before[355.0].ready == 0  # started at 350
    assert before[360.0].ready == before[360.0].replicas == 2  # Ready as it lands at 361
    assert before[235.0].replicas == 0  # the third was not forecast
    assert result.slo_attainment(30.0) == 1.0
