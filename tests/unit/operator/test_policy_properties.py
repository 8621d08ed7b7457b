"""Properties of the backlog-time policy that must hold for every input (hypothesis)."""

from __future__ import annotations

from dataclasses import replace

from ebbtide_operator.policy import Observation, PolicyState, ScalingSpec, decide
from hypothesis import given, settings
from hypothesis import strategies as st

rates = st.floats(min_value=0.0, max_value=500.0, allow_nan=False)
ages = st.floats(min_value=0.0, max_value=3600.0, allow_nan=False)


@st.composite
def specs(draw) -> ScalingSpec:
    lo = draw(st.integers(0, 20))
    hi = draw(st.integers(lo, 200))
    return ScalingSpec(
        min_replicas=lo,
        max_replicas=max(hi, 1),
        target_backlog_seconds=draw(st.floats(1.0, 600.0)),
        poll_seconds=draw(st.sampled_from([1.0, 5.0, 15.0])),
        scale_down_stabilization_seconds=draw(st.sampled_from([0.0, 60.0, 300.0])),
        scale_to_zero_idle_seconds=draw(st.sampled_from([0.0, 120.0])),
        max_scale_up_step=draw(st.integers(0, 10)),
        concurrency=draw(st.integers(1, 16)),
        paused=draw(st.booleans()),
    )


@st.composite
def states(draw) -> PolicyState:
    recs = draw(st.lists(st.tuples(st.floats(0.0, 1000.0), st.integers(0, 300)), max_size=12))
    return PolicyState(
        recommendations=sorted(recs),
        idle_since=draw(st.one_of(st.none(), st.floats(0.0, 1000.0))),
        arrival_rate_smoothed=draw(st.one_of(st.none(), rates)),
        last_poll_time=draw(st.one_of(st.none(), st.floats(0.0, 1000.0))),
        last_scale_time=draw(st.one_of(st.none(), st.floats(0.0, 2000.0))),
        arrival_jump=draw(st.one_of(st.none(), rates)),
        jump_since=draw(st.one_of(st.none(), st.floats(0.0, 1000.0))),
        up_backlog=draw(st.one_of(st.none(), st.integers(0, 100_000))),
        bursts=draw(st.one_of(st.just([]), periodic_bursts())),
        burst=draw(st.one_of(st.none(), bursts())),
        warm_backlog=draw(st.one_of(st.none(), st.integers(0, 100_000))),
    )


def bursts():
    return st.tuples(st.floats(0.0, 2000.0), st.integers(0, 5_000), st.floats(0.0, 30.0))


@st.composite
def periodic_bursts(draw) -> list[tuple[float, int, float]]:
    """A record that forecasts a burst around now (1000-2000 s), or one that is nearly so."""
    period = draw(st.floats(30.0, 600.0))
    first = draw(st.floats(1000.0 - 4 * period, 2000.0 - 3 * period))
    return [
        (first + k * period + draw(st.floats(-3.0, 3.0)), draw(st.integers(0, 5_000)), 2.0)
        for k in range(draw(st.integers(3, 4)))
    ]


def observation(backlog: int, **kw) -> Observation:
    return Observation(backlog=backlog, **kw)


obs_kwargs = st.fixed_dictionaries(
    {
        "now": st.floats(1000.0, 2000.0),
        "in_flight": st.integers(0, 500),
        "oldest_age_s": ages,
        "arrival_rate": rates,
        "completion_rate": rates,
        "replicas": st.integers(0, 300),
        "ready_replicas": st.integers(0, 300),
        "service_rate": st.one_of(st.none(), st.floats(0.01, 100.0)),
        "broker_reachable": st.booleans(),
        "pod_startup_s": st.one_of(st.none(), st.floats(0.0, 120.0)),
    }
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(specs(), states(), obs_kwargs, st.integers(0, 100_000), st.integers(0, 100_000))
def test_monotone_in_backlog(spec, state, kw, b1, b2):
    low, high = sorted((b1, b2))
    assert (
        decide(observation(low, **kw), spec, state).replicas
        <= decide(observation(high, **kw), spec, state).replicas
    )


@settings(max_examples=300, deadline=None, derandomize=True)
@given(specs(), states(), obs_kwargs, st.integers(0, 100_000))
def test_within_min_and_max(spec, state, kw, backlog):
    d = decide(observation(backlog, **kw), spec, state)
    assert spec.min_replicas <= d.replicas <= spec.max_replicas
    assert d.reason
    assert d.degraded == (not kw["broker_reachable"] and not spec.paused)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    specs(),
    st.floats(0.1, 200.0),
    st.floats(0.05, 20.0),
    st.integers(0, 50),
)
def test_no_flapping_under_steady_load(spec, arrival_rate, mu, backlog):
    """Constant load: replicas move in one direction only (a step-limited ramp), and
    settle at the first decision when unbounded."""
    state, replicas, history = PolicyState(), spec.min_replicas, []
    for i in range(120):
        o = Observation(
            now=1000.0 + i * spec.poll_seconds,
            backlog=backlog,
            in_flight=0,
            oldest_age_s=0.0,
            arrival_rate=arrival_rate,
            completion_rate=arrival_rate,
            replicas=replicas,
            ready_replicas=replicas,
            service_rate=mu,
        )
        d = decide(o, spec, state)
        state, replicas = d.state, d.replicas
        history.append(replicas)
    steps = [b - a for a, b in zip(history, history[1:], strict=False) if b != a]
    assert all(s > 0 for s in steps) or all(s < 0 for s in steps), history  # no reversal
    if spec.max_scale_up_step == 0:
        assert len(set(history)) == 1, history  # settled at the first decision


@settings(max_examples=200, deadline=None, derandomize=True)
@given(specs(), states(), obs_kwargs, st.integers(0, 100_000))
def test_state_is_json_round_trippable(spec, state, kw, backlog):
    d = decide(observation(backlog, **kw), spec, state)
    assert PolicyState.from_dict(d.state.to_dict()) == d.state


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    specs(),
    states(),
    obs_kwargs,
    st.integers(0, 300),
    st.integers(0, 2_000),
    st.integers(0, 2_000),
)
def test_monotone_in_backlog_while_a_burst_drains(spec, state, kw, pods, b1, b2):
    """The drain-down's case: every pod Ready and nothing arriving, where the policy may go
    below the busy pods; an empty queue must not keep more pods than a queued task."""
    kw = dict(kw, arrival_rate=0.0, replicas=pods, ready_replicas=pods, broker_reachable=True)
    low, high = sorted((b1, b2))
    assert (
        decide(observation(low, **kw), spec, state).replicas
        <= decide(observation(high, **kw), spec, state).replicas
    )


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    specs(),
    states(),
    obs_kwargs,
    st.floats(30.0, 600.0),
    st.floats(-5.0, 20.0),
    st.integers(1, 5_000),
    st.integers(0, 2_000),
    st.integers(0, 2_000),
)
def test_monotone_and_bounded_while_a_forecast_burst_is_due(
    spec, state, kw, period, due_in, tasks, b1, b2
):
    """The forecast's floor (pre-warmed pods, then held while the burst's backlog grows)
    depends on the state and the clock, not on this tick's backlog. (A quiet queue, so
    that the floor is what decides in many of the examples.)"""
    spec = replace(spec, paused=False)
    kw = dict(kw, broker_reachable=True, in_flight=0, arrival_rate=0.0)
    onset = kw["now"] + due_in
    record = [(onset - k * period, tasks, 1.0) for k in (3, 2, 1)]
    state = replace(state, bursts=record, burst=None)
    low, high = sorted((b1, b2))
    d_low = decide(observation(low, **kw), spec, state)
    d_high = decide(observation(high, **kw), spec, state)
    assert d_low.replicas <= d_high.replicas
    assert spec.min_replicas <= d_low.replicas <= d_high.replicas <= spec.max_replicas
    assert PolicyState.from_dict(d_high.state.to_dict()) == d_high.state
