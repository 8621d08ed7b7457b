"""A forecast of periodic bulk bursts, so their pods are Ready when they land.

Pure functions of the policy's inputs (no I/O, no clock); the record lives in
`PolicyState` (`bursts`, `burst`), which the operator persists in the TaskQueue status,
so a restarted operator keeps what it learnt.

Why: a reactive policy starts a burst's pods when it lands, so each works only T - S of
the deadline and the burst needs more of them (heavy-tailed bursts every 5 minutes: four
pods where two or three warm ones would do). A cron job or a periodic bulk send is the
one case where the next burst is known in advance: the same size, at the same interval.

What counts (docs/scaling-policy.md, section 1, "A forecast of periodic bulk bursts"):
- a burst begins at a tick that follows an idle one (nothing queued, running or
  arriving); its onset is the oldest queued task's arrival. It is closed at the next
  idle tick, with its tasks and how long they took to arrive;
- a forecast needs FORECAST_BURSTS bulk bursts (all their tasks within BULK_POLLS poll
  intervals: a bulk send, not a stream, which the arrival term follows) at intervals
  that agree within one poll (the jitter: an onset is seen at a tick);
- the pods pre-warmed are those that start the smallest of those bursts within T while
  Ready from its onset (the backlog term's own count), started at the tick nearest
  onset - S and held until onset + jitter, then while the burst's backlog grows. A
  burst that does not come by then drops the record: a wrong forecast costs those pods
  for S plus about two polls once, and the next forecast needs FORECAST_BURSTS bursts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ebbtide_operator.policy import Observation, PolicyState, ScalingSpec

FORECAST_BURSTS = 3  # bursts at agreeing intervals before one is forecast (2 intervals)
BULK_POLLS = 2.0  # a burst whose tasks all arrive within this many polls is a bulk send
HISTORY = 4  # closed bursts kept in the state
PREWARM_LEAD_POLLS = 0.5  # pre-warm at the tick nearest onset - S: at most half a poll early

Burst = tuple[float, int, float]  # (onset, tasks, seconds from the onset to the last arrival)


@dataclass(frozen=True)
class Forecast:
    """The next burst of a periodic pattern."""

    onset: float  # when it is expected to land
    period: float
    tasks: int  # the smallest of the pattern's bursts
    jitter: float  # how early or late it may land and still be this burst


def forecast(bursts: list[Burst], spec: ScalingSpec) -> Forecast | None:
    """The next burst when the last FORECAST_BURSTS were bulk sends at intervals that agree
    within the jitter (one poll); None otherwise. The jitter is absolute, not a fraction
    of the period: a cron job's lateness does not grow with its period, and the wider
    the match, the more often random gaps pass for a period."""
    if len(bursts) < FORECAST_BURSTS:
        return None
    recent = bursts[-FORECAST_BURSTS:]
    if any(span > BULK_POLLS * spec.poll_seconds or tasks <= 0 for _, tasks, span in recent):
        return None
    onsets = [onset for onset, _, _ in recent]
    gaps = [b - a for a, b in zip(onsets, onsets[1:], strict=False)]
    period = sum(gaps) / len(gaps)
    if not (period > 0):
        return None
    jitter = max(spec.poll_seconds, 1e-3)
    if any(abs(gap - period) > jitter for gap in gaps):
        return None
    return Forecast(
        onset=onsets[-1] + period,
        period=period,
        tasks=min(tasks for _, tasks, _ in recent),
        jitter=jitter,
    )


def track_bursts(
    obs: Observation, spec: ScalingSpec, state: PolicyState, idle: bool, arrived: int
) -> tuple[list[Burst], Burst | None]:
    """The record after this tick: (closed bursts, the open one). `idle` is this tick's
    idleness, `arrived` the tasks that came since the last tick. A burst opens at a tick
    after an idle one (`state.idle_since` set) that is not idle itself, and closes at the
    next idle tick. A forecast burst that has not come by its onset + jitter drops the
    record (the pattern broke)."""
    bursts, open_burst = list(state.bursts), state.burst
    if open_burst is None and idle:
        expected = forecast(bursts, spec)
        if expected is not None and obs.now > expected.onset + expected.jitter:
            bursts = []  # it did not come: the pattern broke
    if open_burst is not None:
        onset, tasks, last = open_burst
        if arrived > 0:
            tasks, last = tasks + arrived, obs.now
        if idle:
            bursts = (bursts + [(onset, tasks, max(last - onset, 0.0))])[-HISTORY:]
            return bursts, None
        return bursts, (onset, tasks, last)
    if idle or state.idle_since is None:
        return bursts, None
    onset = obs.now - max(obs.oldest_age_s, 0.0) if obs.backlog > 0 else obs.now
    if state.last_poll_time is not None:
        onset = max(onset, state.last_poll_time)  # it arrived after the idle tick
    return bursts, (onset, max(arrived, 0), obs.now)


def prewarm_pods(
    bursts: list[Burst],
    open_burst: Burst | None,
    spec: ScalingSpec,
    now: float,
    startup: float,
    mu: float,
) -> tuple[int, Forecast | None]:
    """(pods to have while a forecast burst is due, the forecast): 0 unless `now` is in
    (onset - startup - poll/2, onset + jitter] (pods Ready at most half a poll before
    the onset, or after it: then its woken ticks count them as starting) and the burst
    has not begun (`open_burst` is from the ticks before this one, so this does not
    depend on this tick's backlog). The pods are the backlog term's count for the
    burst's tasks on pods Ready from its onset: mu tasks/s per pod over T plus one on
    each slot. No headroom: a fraction over a whole pod is what the next poll tops up."""
    if open_burst is not None or not (mu > 0):
        return 0, None
    expected = forecast(bursts, spec)
    if expected is None:
        return 0, None
    start = expected.onset - startup - PREWARM_LEAD_POLLS * spec.poll_seconds
    if not (start < now <= expected.onset + expected.jitter):
        return 0, None
    per_pod = mu * spec.target_backlog_seconds + max(spec.concurrency, 1)
    return max(1, math.ceil(expected.tasks / per_pod - 1e-9)), expected


def bulk_due(bursts: list[Burst], spec: ScalingSpec, now: float) -> bool:
    """A forecast bulk burst may be landing now: from its onset - jitter until its tasks
    have had BULK_POLLS polls to arrive after onset + jitter. (From the closed record
    only, so it does not depend on this tick's backlog.)"""
    expected = forecast(bursts, spec)
    if expected is None:
        return False
    end = expected.onset + expected.jitter + BULK_POLLS * spec.poll_seconds
    return expected.onset - expected.jitter <= now <= end


def forecast_floor(
    obs: Observation, spec: ScalingSpec, state: PolicyState, startup: float, mu: float
) -> tuple[int, str | None, int | None]:
    """(the fewest replicas the forecast asks for, why, the state's new `warm_backlog`).

    Before a forecast burst: `prewarm_pods`. Once it lands, the pods pre-warmed for it are
    held while its backlog has not shrunk (`state.warm_backlog`, the largest backlog seen
    since they were started): they are starting for this backlog, as the flap guard's
    pods are, and a woken tick that counted them at their last second of start-up would
    otherwise let them go and start them again. The floor never depends on this tick's
    backlog other than through `backlog >= warm_backlog`, so the result stays monotone
    in the backlog."""
    pods, expected = prewarm_pods(state.bursts, state.burst, spec, obs.now, startup, mu)
    if pods > 0 and expected is not None:
        why = (
            f"forecast: a burst of {expected.tasks} tasks every {expected.period:.0f}s is due "
            f"in {max(expected.onset - obs.now, 0.0):.0f}s: {pods} replicas ready for it"
        )
        return pods, why, max(obs.backlog, 0)
    warm = state.warm_backlog
    if warm is not None and obs.backlog > 0 and obs.backlog >= warm and obs.replicas > 0:
        why = f"backlog {obs.backlog}: holding the {obs.replicas} replicas of a forecast burst"
        return obs.replicas, why, obs.backlog
    return 0, None, None
