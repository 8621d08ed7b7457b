"""How many replicas the work needs: the estimators and the sizing behind `policy.decide`.

Pure functions of the policy's inputs (no I/O, no clock). Kept apart from policy.py so
the contract (the dataclasses and `decide`) stays short; docs/scaling-policy.md derives
every formula.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ebbtide_operator.policy import Observation, PolicyState, QueueObservation, ScalingSpec

RISE_DAMPING = 2.0  # a higher mu sample needs this many times the completions to move it
CHANGE_SIGMAS = 4.0  # arrival counts beyond this many Poisson sigmas mean a real change


def measured_service_rate(obs: Observation) -> float | None:
    mu = obs.service_rate
    return mu if mu is not None and mu > 0 and math.isfinite(mu) else None


def smooth_service_rate(obs: Observation, spec: ScalingSpec, state: PolicyState) -> float | None:
    """A second EWMA of mu, weighted by how many tasks completed since the last poll:
    weight = 1 - exp(-completed / service_smoothing_tasks). Per-poll samples swing by
    +-10 % even at a steady load; weighting by count keeps a few completions from moving it.

    The sample depends on what the slots were doing (`service_sample`):
    - saturated (a backlog at this poll and the last): completions per busy slot-second,
      counting the slots that are still running (Little's law). The operator's mu divides
      by the service time of the tasks that *completed*, and the first seconds of a burst
      complete only its short tasks: on 2 s tasks it read 1.4/s and a burst was planned
      with a third of the pods it needed;
    - a stream (queued or arriving, not saturated): the operator's mu, unbiased in the
      long run;
    - nothing queued or arriving: no sample. What completes then is the tail of a burst,
      its longest tasks, and it would leave a mu too low for the start of the next one."""
    prev, last = state.service_rate_smoothed, state.last_poll_time
    sample = service_sample(obs, spec, state)
    if sample is None:
        return prev if prev is not None else measured_service_rate(obs)
    scale = spec.service_smoothing_tasks
    if prev is None or scale <= 0:
        return sample
    if last is None or obs.now <= last:
        return prev
    completed = max(obs.completion_rate, 0.0) * (obs.now - last)
    if sample > prev:
        scale *= RISE_DAMPING  # a mu read too high costs missed deadlines, too low pods
    return prev + (1.0 - math.exp(-completed / scale)) * (sample - prev)


def service_sample(obs: Observation, spec: ScalingSpec, state: PolicyState) -> float | None:
    """This poll's mu sample (tasks/s per replica), or None when it would mislead."""
    if obs.backlog <= 0 and obs.arrival_rate <= 0:
        return None
    busy_before, last = state.busy_slots, state.last_poll_time
    if obs.backlog > 0 and busy_before is not None and last is not None and obs.now > last:
        dt = obs.now - last
        busy_now = max(obs.in_flight, 0)
        if busy_now > busy_before:
            # Pods became Ready in between: each new slot was busy from its pod's Ready
            # time, estimated from when it was added (state.starts) plus the start-up.
            ready_at = _ready_time(obs, spec, state, last)
            busy = busy_before * dt + (busy_now - busy_before) * (obs.now - ready_at)
        else:
            busy = (busy_before + busy_now) / 2.0 * dt
        if busy > 0 and obs.completion_rate > 0 and math.isfinite(obs.completion_rate):
            return max(spec.concurrency, 1) * obs.completion_rate * dt / busy
    return measured_service_rate(obs)


def _ready_time(obs: Observation, spec: ScalingSpec, state: PolicyState, last: float) -> float:
    """When the pods that became Ready since `last` did: the mean over the recent
    scale-ups whose start-up ended in (last, now], else the middle of the interval."""
    startup = startup_seconds(obs, spec)
    done = [(t + startup, n) for t, n in state.starts if last < t + startup <= obs.now]
    pods = sum(n for _, n in done)
    if pods <= 0:
        return (last + obs.now) / 2.0
    return sum(t * n for t, n in done) / pods


def busy_slots(obs: Observation) -> float | None:
    """What the next poll's saturated sample divides by: the slots running now, when a
    backlog keeps them all busy; None otherwise."""
    return float(max(obs.in_flight, 0)) if obs.backlog > 0 else None


def service_rate_per_replica(mu: float | None, spec: ScalingSpec) -> float:
    """mu: measured when known, else the cold-start guess (never zero)."""
    if mu is not None and mu > 0 and math.isfinite(mu):
        return mu
    return max(1, spec.concurrency) / max(spec.initial_task_seconds, 1e-3)


def smooth_arrival_rate(
    obs: Observation, spec: ScalingSpec, state: PolicyState, bulk_due: bool = False
) -> tuple[float, float | None, float | None]:
    """(lambda to plan with, an upward jump still to be confirmed, when that jump began).

    An EWMA with time constant `arrival_smoothing_seconds` and a Poisson change detector
    (|observed - expected| > CHANGE_SIGMAS * sqrt(expected) + 2 arrivals in the poll):
    - a fall is believed at once: the pods it frees can go now;
    - a rise is believed once it has lasted two polls' worth of time (2 * poll_seconds),
      at its mean rate over that span. A bulk send (500 tasks in one second) looks like
      100/s for one poll, but it is backlog, already sized by the backlog term; counting
      it again as a stream started 25 pods it never used. The span is measured in time,
      not in ticks: a woken operator ticks every quarter second while a burst lands on
      a queue with no ready worker, and a count of ticks would take any burst for a
      stream. A real step is confirmed after 2 * poll_seconds, when its backlog has
      already raised the count.
    While a forecast bulk burst is landing (`bulk_due`, policy_forecast.bulk_due) a rise
    stays pending: its tasks are backlog, even when they straddle two polls, which
    would otherwise confirm them as a stream.
    Small changes are noise and only move the EWMA (and drop a pending jump)."""
    raw = obs.arrival_rate if math.isfinite(obs.arrival_rate) else 0.0
    raw = max(raw, 0.0)
    prev, last = state.arrival_rate_smoothed, state.last_poll_time
    tau = spec.arrival_smoothing_seconds
    if prev is None or tau <= 0:
        return raw, None, None
    if last is None or obs.now <= last:
        return prev, state.arrival_jump, state.jump_since
    dt = obs.now - last
    expected, observed = prev * dt, raw * dt
    if abs(observed - expected) > CHANGE_SIGMAS * math.sqrt(expected) + 2.0:
        if raw < prev:
            return raw, None, None
        jump, since = state.arrival_jump, state.jump_since
        if jump is None or since is None or since >= last:
            return prev, raw, last
        mean = (jump * (last - since) + raw * dt) / (obs.now - since)
        if obs.now - since >= 2.0 * spec.poll_seconds - 1e-9 and not bulk_due:
            return mean, None, None
        return prev, mean, since
    return prev + (1.0 - math.exp(-dt / tau)) * (raw - prev), None, None


def startup_seconds(obs: Observation, spec: ScalingSpec) -> float:
    """How long a new pod takes to be Ready: observed when the operator measured it,
    else the spec's guess."""
    seen = obs.pod_startup_s
    if seen is not None and math.isfinite(seen) and seen >= 0:
        return seen
    return max(spec.pod_startup_seconds, 0.0)


def backlog_pods(backlog: float, mu: float, fleet: tuple[tuple[float, float, float], ...]) -> float:
    """The fewest (fractional) pods that start `backlog` tasks in time.

    `fleet` lists (pods, seconds of the deadline they can work, free slots per pod) best
    first: ready pods, then starting ones, then new ones without limit (`fleet_horizons`).
    A pod starts mu tasks/s over its seconds, plus one on each slot that is free when its
    seconds begin: a task only has to *start* by its deadline, so the last one on each
    slot need not finish in time (the same lanes as the oracle's bound). A pod that would
    be ready after the burst is drained adds nothing and is not asked for, and the shorter
    the deadline, the more of the fleet must exist already."""
    if backlog <= 0:
        return 0.0
    need = float(backlog)  # tasks to start
    pods = 0.0
    for count, horizon, free in fleet:
        per_pod = mu * horizon + free
        if per_pod <= 0:
            continue
        take = min(count, need / per_pod)
        pods += take
        need -= take * per_pod
        if need <= 1e-9:
            break
    return pods


def fleet_horizons(
    obs: Observation,
    spec: ScalingSpec,
    state: PolicyState,
    deadline: float,
    target: float,
    backlog: float = 0.0,
    mu: float = 0.0,
) -> tuple[tuple[float, float, float], ...]:
    """(pods, seconds of the deadline they can use, free slots per pod): ready, starting
    (newest last), new.
    Each horizon is at least min_deadline_fraction * T: when the deadline is gone anyway
    (the oldest task is older than T - S), the late backlog is given that long to catch up."""
    startup = startup_seconds(obs, spec)
    floor = max(target * spec.min_deadline_fraction, 1e-3)
    ready = max(0, min(obs.ready_replicas, obs.replicas))
    slots = float(max(spec.concurrency, 1))
    # A ready slot running a task starts its next one only when that ends: no bonus.
    free = max(0.0, ready * slots - max(obs.in_flight, 0)) / ready if ready else 0.0
    fleet = [(float(ready), max(deadline, floor), free)]
    starting = starting_pods(obs, state, startup)
    for count, left in starting:
        fleet.append((float(count), max(deadline - left, floor), slots))
    new = max(deadline - startup, floor)
    if deadline - startup < floor and backlog > 0 and mu > 0:
        # A new pod would be Ready after the deadline: it only helps if the pods there
        # are cannot start the backlog before it is Ready anyway.
        existing = ready * (mu * startup + free) + sum(
            n * (mu * (startup - left) + slots) for n, left in starting
        )
        if existing >= backlog:
            new = 0.0
    fleet.append((math.inf, new, slots if new > 0 else 0.0))
    return tuple(fleet)


def starting_pods(obs: Observation, state: PolicyState, startup: float) -> list[tuple[int, float]]:
    """(pods, start-up seconds left) for the pods not Ready yet, oldest first. Pods become
    Ready in the order they were added, so the starting ones are the newest scale-ups
    (`state.starts`); any not accounted for there (an operator restart, a state from an
    older version) are taken to have started at the last scale change."""
    starting = max(0, obs.replicas - max(0, min(obs.ready_replicas, obs.replicas)))
    out: list[tuple[int, float]] = []
    for at, count in reversed(state.starts):
        if starting <= 0:
            break
        take = min(starting, count)
        out.append((take, min(startup, max(0.0, startup - (obs.now - at)))))
        starting -= take
    if starting > 0:
        since = obs.now - state.last_scale_time if state.last_scale_time is not None else 0.0
        out.append((starting, min(startup, max(0.0, startup - since))))
    out.reverse()
    return out


def record_starts(
    state: PolicyState, now: float, current: int, target: int, keep_s: float
) -> list[tuple[float, int]]:
    """The scale-ups of the last `keep_s` seconds, with this one: what starting_pods reads."""
    starts = [(t, n) for t, n in state.starts if now - t <= keep_s]
    if target > current:
        starts.append((now, target - current))
    return _capped(starts, later=True)


MAX_HISTORY = 32  # entries of state.starts / state.arrivals kept in the TaskQueue status


def _capped(items: list[tuple[float, int]], later: bool) -> list[tuple[float, int]]:
    """At most MAX_HISTORY entries (woken ticks come every quarter second): the oldest two
    merge, timed by the `later` one (pods: less progress assumed) or the earlier one
    (arrivals: older tasks assumed), so a merge only ever makes the policy more careful."""
    while len(items) > MAX_HISTORY:
        (t1, n1), (t2, n2) = items[0], items[1]
        items = [(t2 if later else t1, n1 + n2)] + items[2:]
    return items


def queue_backlog_pods(
    obs: Observation,
    spec: ScalingSpec,
    state: PolicyState,
    queues: tuple[QueueObservation, ...],
    mu: float,
) -> tuple[float, QueueObservation | None]:
    """Pods for the backlog of all queues, earliest deadline first: the tasks with the k
    nearest deadlines must all start by the k-th deadline. A queue's deadline is its own
    T minus the age of its oldest task (the real one: what is left for the task that has
    waited longest). A lone queue whose recent arrivals explain its backlog is split by
    when those tasks arrived (`backlog_ages`): a burst that lands over five seconds has
    five more seconds for its last task than for its first. Returns the pods and the
    binding queue."""
    best, worst, total = 0.0, None, 0.0
    for deadline, target, count, q in backlog_parts(obs, spec, state, queues):
        total += count
        fleet = fleet_horizons(obs, spec, state, deadline, target, total, mu)
        pods = backlog_pods(total, mu, fleet)
        if pods > best or worst is None:
            best, worst = max(best, pods), q
    return best, worst


def backlog_parts(
    obs: Observation,
    spec: ScalingSpec,
    state: PolicyState,
    queues: tuple[QueueObservation, ...],
) -> list[tuple[float, float, int, QueueObservation]]:
    """(deadline, T, tasks, queue) for each part of the backlog, earliest deadline first:
    a queue's backlog with its oldest task's deadline, or a lone queue's split by when its
    tasks arrived (`backlog_ages`)."""
    parts = []
    for q in queues:
        if q.backlog > 0:
            target = q.target_backlog_seconds
            if not (target > 0):
                target = spec.target_backlog_seconds
            ages = backlog_ages(obs, state, q) if len(queues) == 1 else None
            for age, count in ages or [(q.oldest_age_s, q.backlog)]:
                parts.append((target - max(age, 0.0), target, count, q))
    parts.sort(key=lambda item: item[0])
    return parts


def backlog_ages(
    obs: Observation, state: PolicyState, q: QueueObservation
) -> list[tuple[float, int]] | None:
    """(age, tasks) of a FIFO queue's backlog, oldest first, from the arrivals of the
    last polls (`state.arrivals`: when each poll's interval began, and how many came):
    the backlog is the newest tasks, and a task is taken to be as old as the start of
    the interval it came in. The oldest task keeps its observed age. None when the
    recorded arrivals do not account for the whole backlog (tasks that came due from a
    delay or a retry, a fresh state): then every task is as old as the oldest."""
    left, groups = q.backlog, []
    for start, count in reversed(state.arrivals):
        if left <= 0:
            break
        take = min(left, count)
        if take > 0:
            groups.append((min(obs.now - start, q.oldest_age_s), take))
            left -= take
    if left > 0 or not groups:
        return None
    groups.reverse()
    age, count = groups[0]
    if count > 1:  # the oldest task is exactly as old as observed
        groups[0:1] = [(q.oldest_age_s, 1), (age, count - 1)]
    else:
        groups[0] = (q.oldest_age_s, 1)
    return groups


def record_arrivals(obs: Observation, state: PolicyState, keep_s: float) -> list[tuple[float, int]]:
    """This poll's arrivals (from the start of its interval) added to the recent ones
    that backlog_ages reads; older than `keep_s` are dropped."""
    arrivals = [(t, n) for t, n in state.arrivals if obs.now - t <= keep_s]
    count = arrived_since_last(obs, state)
    if count > 0 and state.last_poll_time is not None:
        arrivals.append((state.last_poll_time, count))
    return _capped(arrivals, later=False)


def arrived_since_last(obs: Observation, state: PolicyState) -> int:
    """The tasks that arrived since the previous decision (0 without one)."""
    last = state.last_poll_time
    if last is None or obs.now <= last or not math.isfinite(obs.arrival_rate):
        return 0
    return round(max(obs.arrival_rate, 0.0) * (obs.now - last))


# A scale-down cannot be taken back within the deadline (a new pod needs the start-up),
# so the pods it keeps are counted at this fraction of the measured mu.
DRAIN_MU_FACTOR = 0.8


def ready_drain_pods(
    obs: Observation,
    spec: ScalingSpec,
    state: PolicyState,
    queues: tuple[QueueObservation, ...],
    mu: float,
) -> float | None:
    """The fewest Ready pods that still start every part of the backlog by its real
    deadline, at DRAIN_MU_FACTOR * mu and with no free-slot bonus (0 with no backlog);
    None when a part is already late (a late backlog gets the catch-up allowance of
    fleet_horizons, which a scale-down must not lean on).

    This is what lets pods go while a burst drains: the backlog term counts pods still to
    start, and the busy floor keeps every pod whose slots are all running, so without it
    a burst's fleet stayed whole until its backlog was gone and then idled beside the
    last tasks until the next poll."""
    if not (mu > 0):
        return None
    rate = DRAIN_MU_FACTOR * mu
    pods, total = 0.0, 0
    for deadline, _, count, _ in backlog_parts(obs, spec, state, queues):
        total += count
        if deadline <= 0:
            return None
        pods = max(pods, total / (rate * deadline))
    return pods
