"""The backlog-time scaling policy: a pure function, no I/O.

CONTRACT (shared by the operator's tick loop, the simulator and the property tests):

    decide(obs: Observation, spec: ScalingSpec, state: PolicyState) -> Decision

`PolicyState` is small, JSON-serialisable (`to_dict`/`from_dict`) so the operator can
persist it in the TaskQueue's status and scaling survives an operator restart.
`BacklogTimePolicy` wraps `decide` as a stateful callable `policy(obs, spec) -> int`
for the simulator.

The maths (docs/scaling-policy.md explains every step; the sizing is in policy_demand):

- desired = ceil(max(backlog pods, (lambda + sum_q B_q / T_q) / mu)), never below the
  busy pods; mu = measured tasks/s per replica, or concurrency / initial_task_seconds;
- backlog pods: the fewest pods that start every queue's backlog before its oldest
  task's deadline (T_q - age), earliest deadline first, where ready pods work for the
  whole deadline, starting pods for what is left after their start-up (timed from their
  own scale-up), and new pods for what is left after the (observed) pod start-up time.
  A burst is sized from its work, a lone queue's backlog is split by when its tasks
  arrived (each part with its own deadline), and a pod that would be ready after the
  burst is drained is not started;
- mu is the policy's own EWMA (weighted by completions; a rise at half pace): while a
  backlog saturates the slots, completions per busy slot-second (Little's law), else
  the operator's mu, and nothing from a burst's tail;
- lambda is an EWMA with a change detector: a fall is believed at once, a rise once it
  has lasted 2 * poll_seconds (a bulk send is backlog, not a stream; woken ticks come
  faster than polls, so the span is timed, not counted);
- scale-up is immediate (bounded by max_scale_up_step). Scale-down is immediate too,
  except that the stabilization window holds the highest count the arrivals alone asked
  for (a fall beyond noise empties it) and pods started for a backlog stay until that
  backlog shrinks; while a burst drains on Ready pods with nothing arriving, the count
  falls to the fewest pods that still start its backlog by the real deadlines (below the
  busy pods: those let go finish their tasks); zero after scale_to_zero_idle_seconds
  with nothing ready, running or arriving;
- a forecast of periodic bulk bursts (policy_forecast): after three bulk bursts at one
  interval, the pods for the next are started so that they are Ready as it lands, and
  held while its backlog grows; a burst that does not come drops the record.

Replicas are the Deployment's desired count, so pods that are still starting already
count as capacity: the policy computes a total, never "ready + more".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ebbtide_operator.policy_demand import (
    arrived_since_last,
    busy_slots,
    measured_service_rate,
    queue_backlog_pods,
    ready_drain_pods,
    record_arrivals,
    record_starts,
    service_rate_per_replica,
    smooth_arrival_rate,
    smooth_service_rate,
    startup_seconds,
)
from ebbtide_operator.policy_forecast import Burst, bulk_due, forecast_floor, track_bursts


@dataclass(frozen=True)
class QueueObservation:
    """What one queue looks like at this poll."""

    name: str
    backlog: int  # ready tasks
    in_flight: int
    oldest_age_s: float  # age of the oldest ready task (0 when empty)
    arrival_rate: float  # lambda, tasks/s, from the enqueued counter
    target_backlog_seconds: float  # this queue's T
    # Seconds until the earliest delayed task (a delay= or a retry) comes due; None when
    # none is waiting. Due tasks are already counted in `backlog`.
    next_due_in_s: float | None = None
    # Reported, not decided on: delayed (scheduled or retrying) tasks, how many of those
    # are due now (already in `backlog`), and the dead-letter queue's depth.
    delayed: int = 0
    due: int = 0
    dead: int = 0


@dataclass(frozen=True)
class Observation:
    """Everything the policy may look at. Aggregates are over all queues."""

    now: float
    backlog: int
    in_flight: int
    oldest_age_s: float
    arrival_rate: float  # tasks/s
    completion_rate: float  # tasks/s, whole TaskQueue
    replicas: int  # currently desired (spec.replicas of the Deployment)
    ready_replicas: int  # pods Ready now; replicas - ready_replicas are still starting
    service_rate: float | None = None  # mu: tasks/s per replica (smoothed); None = unknown yet
    queues: tuple[QueueObservation, ...] = ()  # empty = a single queue described by aggregates
    broker_reachable: bool = True
    # Seconds from a worker pod's creation to Ready, as observed (e.g. a recent median);
    # None = not measured yet, and ScalingSpec.pod_startup_seconds is used.
    pod_startup_s: float | None = None


@dataclass(frozen=True)
class ScalingSpec:
    min_replicas: int = 0
    max_replicas: int = 10
    target_backlog_seconds: float = 30.0
    poll_seconds: float = 5.0
    scale_down_stabilization_seconds: float = 60.0
    scale_to_zero_idle_seconds: float = 0.0
    max_scale_up_step: int = 0  # 0 = unbounded
    initial_task_seconds: float = 1.0  # cold-start guess of one task's duration
    concurrency: int = 1  # task slots per replica
    fallback_replicas: int | None = None  # when the broker is unreachable; None = hold current
    paused: bool = False
    # Scale up only when the need exceeds the current replicas by more than this fraction
    # (the HPA's tolerance): a passing backlog that the current pods drain well within T
    # is not worth a pod start.
    tolerance: float = 0.1
    # Time constant of the arrival-rate EWMA; 0 disables smoothing.
    arrival_smoothing_seconds: float = 60.0
    # Completions that move the policy's own mu EWMA by 1 - 1/e; 0 disables it.
    service_smoothing_tasks: float = 100.0
    # Shortest drain deadline a late backlog is given, as a fraction of T.
    min_deadline_fraction: float = 0.25
    # A new pod's creation-to-Ready time until one is observed (Observation.pod_startup_s).
    pod_startup_seconds: float = 10.0


@dataclass
class PolicyState:
    """Memory the policy keeps between polls. Must stay JSON-serialisable."""

    # (time, replicas) the arrival rate alone asked for: the scale-down window.
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    idle_since: float | None = None
    last_scale_time: float | None = None
    arrival_rate_smoothed: float | None = None  # EWMA of lambda, tasks/s
    service_rate_smoothed: float | None = None  # EWMA of mu, tasks/s per replica
    last_poll_time: float | None = None  # `now` of the previous decision (EWMA step)
    arrival_jump: float | None = None  # an upward jump in lambda, awaiting confirmation
    jump_since: float | None = None  # when that jump began (the start of its first poll)
    busy_slots: float | None = None  # tasks in flight at the last poll, if it had a backlog
    # (time, pods added) of the recent scale-ups: when the pods still starting were added.
    starts: list[tuple[float, int]] = field(default_factory=list)
    # (start of a poll's interval, tasks that arrived in it): the backlog's ages.
    arrivals: list[tuple[float, int]] = field(default_factory=list)
    up_backlog: int | None = None  # the backlog at the last scale-up, until it shrinks
    # (onset, tasks, seconds their arrival took) of the last bursts, and the one still
    # open: what the forecast of periodic bursts learns from (policy_forecast).
    bursts: list[Burst] = field(default_factory=list)
    burst: Burst | None = None
    # The largest backlog since pods were pre-warmed for a forecast burst, until it shrinks.
    warm_backlog: int | None = None

    def to_dict(self) -> dict:
        return {
            "recommendations": [[t, r] for t, r in self.recommendations],
            "idleSince": self.idle_since,
            "lastScaleTime": self.last_scale_time,
            "arrivalRateSmoothed": self.arrival_rate_smoothed,
            "serviceRateSmoothed": self.service_rate_smoothed,
            "lastPollTime": self.last_poll_time,
            "arrivalJump": self.arrival_jump,
            "jumpSince": self.jump_since,
            "busySlots": self.busy_slots,
            "starts": [[t, n] for t, n in self.starts],
            "arrivals": [[t, n] for t, n in self.arrivals],
            "upBacklog": self.up_backlog,
            "bursts": [[t, n, span] for t, n, span in self.bursts],
            "burst": list(self.burst) if self.burst is not None else None,
            "warmBacklog": self.warm_backlog,
        }

    @classmethod
    def from_dict(cls, data: dict | None) -> PolicyState:
        """Tolerant: a missing or mangled status yields a fresh state, never an error
        (the worst case is one stabilization window forgotten)."""
        if not isinstance(data, Mapping):
            return cls()
        recs: list[tuple[float, int]] = []
        for item in data.get("recommendations") or []:
            try:
                t, r = item
                recs.append((float(t), int(r)))
            except (TypeError, ValueError):
                continue
        return cls(
            recommendations=recs,
            starts=_pairs(data.get("starts")),
            arrivals=_pairs(data.get("arrivals")),
            idle_since=_float_or_none(data.get("idleSince")),
            last_scale_time=_float_or_none(data.get("lastScaleTime")),
            arrival_rate_smoothed=_float_or_none(data.get("arrivalRateSmoothed")),
            service_rate_smoothed=_float_or_none(data.get("serviceRateSmoothed")),
            last_poll_time=_float_or_none(data.get("lastPollTime")),
            arrival_jump=_float_or_none(data.get("arrivalJump")),
            jump_since=_float_or_none(data.get("jumpSince")),
            busy_slots=_float_or_none(data.get("busySlots")),
            up_backlog=_int_or_none(data.get("upBacklog")),
            bursts=[b for b in (_burst(item) for item in _list(data.get("bursts"))) if b],
            burst=_burst(data.get("burst")),
            warm_backlog=_int_or_none(data.get("warmBacklog")),
        )


def _pairs(items: Any) -> list[tuple[float, int]]:
    out: list[tuple[float, int]] = []
    for item in items if isinstance(items, list) else []:
        try:
            t, n = item
            out.append((float(t), int(n)))
        except (TypeError, ValueError):
            continue
    return out


def _list(items: Any) -> list:
    return items if isinstance(items, list) else []


def _burst(item: Any) -> Burst | None:
    """(onset, tasks, span) from its JSON list, or None when it is not one."""
    if not isinstance(item, list) or len(item) != 3:
        return None
    onset, tasks, span = _float_or_none(item[0]), _int_or_none(item[1]), _float_or_none(item[2])
    if onset is None or tasks is None or span is None:
        return None
    return (onset, tasks, span)


def _float_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str  # human-readable, used in Events: "backlog 1200, drain 95s > target 30s"
    state: PolicyState
    drain_seconds: float | None = None  # estimated time to drain at current capacity
    degraded: bool = False  # True when the broker was unreachable


def _clamp(value: int, spec: ScalingSpec) -> int:
    return max(spec.min_replicas, min(spec.max_replicas, value))


def _queues(obs: Observation, spec: ScalingSpec) -> tuple[QueueObservation, ...]:
    if obs.queues:
        return obs.queues
    return (
        QueueObservation(
            name="",
            backlog=obs.backlog,
            in_flight=obs.in_flight,
            oldest_age_s=obs.oldest_age_s,
            arrival_rate=obs.arrival_rate,
            target_backlog_seconds=spec.target_backlog_seconds,
        ),
    )


def _target(q: QueueObservation, spec: ScalingSpec) -> float:
    t = q.target_backlog_seconds
    return t if t > 0 else max(spec.target_backlog_seconds, 1e-3)


@dataclass(frozen=True)
class Demand:
    """The raw recommendation and the figures that explain it."""

    replicas: int
    need: float  # fractional replicas before rounding
    arrival_need: float  # the part that keeps up with arrivals (what the window holds)
    backlog: int
    drain_seconds: float | None  # backlog / current capacity
    worst_queue: QueueObservation | None  # the queue with the tightest deadline
    arrival_rate: float
    service_rate: float


def compute_demand(
    obs: Observation,
    spec: ScalingSpec,
    arrival_rate: float,
    service_rate: float | None = None,
    state: PolicyState | None = None,
) -> Demand:
    """lambda / mu + the pods that start every queue's backlog by its deadline (see
    `policy_demand.queue_backlog_pods`), at least the busy pods."""
    mu = service_rate_per_replica(
        service_rate if service_rate is not None else measured_service_rate(obs), spec
    )
    queues = _queues(obs, spec)
    backlog_need, worst = queue_backlog_pods(obs, spec, state or PolicyState(), queues, mu)
    lam = max(arrival_rate, 0.0)
    if obs.arrival_rate <= 0 and all(q.backlog <= 0 and q.in_flight <= 0 for q in queues):
        lam = 0.0  # nothing queued, running or arriving: no smoothed tail keeps pods
    # The start-up-aware backlog term sizes a burst; the stream term (lambda + B/T) / mu
    # keeps a queue that keeps up with its arrivals short. Under FIFO the backlog is
    # served before the arrivals behind it, so the two are not added: once the backlog
    # has started within its deadline, capacity >= lambda keeps every later task in time.
    need = max(backlog_need, (lam + _backlog_rate(queues, spec)) / mu)
    replicas = math.ceil(need - 1e-9)
    in_flight = sum(max(q.in_flight, 0) for q in queues)
    busy = math.ceil(in_flight / max(spec.concurrency, 1))
    backlog = sum(max(q.backlog, 0) for q in queues)
    if backlog > 0 or due_soon(obs, spec):
        replicas = max(replicas, 1)
    capacity = obs.replicas * mu
    drain = backlog / capacity if capacity > 0 else (0.0 if backlog == 0 else None)
    return Demand(
        replicas=max(replicas, busy),
        need=need,
        arrival_need=lam / mu,
        backlog=backlog,
        drain_seconds=drain,
        worst_queue=worst,
        arrival_rate=lam,
        service_rate=mu,
    )


def _backlog_rate(queues: tuple[QueueObservation, ...], spec: ScalingSpec) -> float:
    """sum_q B_q / T_q: the rate at which the stream term drains the backlog."""
    return sum(max(q.backlog, 0) / _target(q, spec) for q in queues)


def due_soon(obs: Observation, spec: ScalingSpec) -> bool:
    """A delayed task comes due before the next poll: a worker must be there for it,
    even at minReplicas 0, or it would wait for unrelated work to arrive."""
    return any(
        q.next_due_in_s is not None and q.next_due_in_s <= spec.poll_seconds
        for q in _queues(obs, spec)
    )


def _is_idle(obs: Observation, spec: ScalingSpec) -> bool:
    queues = _queues(obs, spec)
    return (
        not due_soon(obs, spec)
        and all(q.backlog <= 0 and q.in_flight <= 0 for q in queues)
        and obs.backlog <= 0
        and obs.in_flight <= 0
        and obs.arrival_rate <= 0
    )


def _hold(obs: Observation, spec: ScalingSpec, state: PolicyState, why: str, degraded: bool):
    replicas = obs.replicas
    if degraded and spec.fallback_replicas is not None:
        replicas = spec.fallback_replicas
    replicas = _clamp(replicas, spec)
    verb = "using fallback" if degraded and spec.fallback_replicas is not None else "holding"
    return Decision(
        replicas=replicas,
        reason=f"{why}: {verb} {replicas} replicas",
        state=state,
        degraded=degraded,
    )


def _up_reason(demand: Demand, obs: Observation, spec: ScalingSpec) -> str:
    q = demand.worst_queue
    if q is not None:
        target = q.target_backlog_seconds
        if q.oldest_age_s > target:
            return f"backlog {demand.backlog}, oldest task {q.oldest_age_s:.0f}s > target {target:.0f}s"
        if demand.drain_seconds is None:
            return f"backlog {demand.backlog}, no workers"
        if demand.drain_seconds > target:
            return f"backlog {demand.backlog}, drain {demand.drain_seconds:.0f}s > target {target:.0f}s"
    if demand.backlog == 0 and due_soon(obs, spec):
        return "a delayed task comes due before the next poll: waking a worker"
    queued = f"backlog {demand.backlog}, " if demand.backlog else ""
    return (
        f"{queued}arrivals {demand.arrival_rate:.2f}/s: need {demand.replicas} replicas "
        f"at {demand.service_rate:.2f}/s each"
    )


def current_within_tolerance(current: int, raw: int, need: float, spec: ScalingSpec) -> bool:
    """The current (non-zero) replicas cover the need up to the tolerance."""
    return 0 < current < raw and need <= current * (1.0 + spec.tolerance)


def decide(obs: Observation, spec: ScalingSpec, state: PolicyState) -> Decision:
    """One poll's decision. Pure: the same inputs always give the same Decision."""
    if spec.paused:
        return _hold(obs, spec, state, "paused", degraded=False)
    if not obs.broker_reachable:
        return _hold(obs, spec, state, "broker unreachable", degraded=True)

    now = obs.now
    landing = bulk_due(state.bursts, spec, now)
    lam, jump, jump_since = smooth_arrival_rate(obs, spec, state, landing)
    mu = smooth_service_rate(obs, spec, state)
    demand = compute_demand(obs, spec, lam, mu, state)
    idle = _is_idle(obs, spec)
    idle_since = (state.idle_since if state.idle_since is not None else now) if idle else None
    idle_for = now - idle_since if idle_since is not None else 0.0

    raw = demand.replicas
    if obs.replicas <= 0 and finishing(obs, spec):
        raw = 0  # the tasks still running are on pods let go, which finish them
    zero_ok = idle and spec.min_replicas == 0 and idle_for >= spec.scale_to_zero_idle_seconds
    if raw == 0 and not zero_ok and obs.replicas > 0:
        raw = 1  # not idle long enough: keep one warm pod (see scale_to_zero_idle_seconds)
    if current_within_tolerance(obs.replicas, raw, demand.need, spec):
        raw = obs.replicas
    elif raw < obs.replicas and raw > 0:
        # Hysteresis: step down only to a count that keeps the tolerance as headroom, so
        # the count does not hop between two values as the need wobbles around one.
        raw = min(obs.replicas, max(raw, math.ceil(demand.need * (1.0 + spec.tolerance) - 1e-9)))
    raw = _clamp(raw, spec)

    # The window holds what the arrivals asked for, not the backlog: a drained backlog is
    # gone for certain, Poisson noise in lambda is not. A fall the change detector
    # believed (state.arrival_rate_smoothed above lam beyond noise) empties the window.
    window = spec.scale_down_stabilization_seconds
    fell = state.arrival_rate_smoothed is not None and _fell(state.arrival_rate_smoothed, lam)
    recs = [] if fell else [(t, r) for t, r in state.recommendations if now - window < t <= now]
    arrival_rec = _clamp(math.ceil(demand.arrival_need * (1.0 + spec.tolerance) - 1e-9), spec)
    recs.append((now, arrival_rec))
    current = obs.replicas
    stabilized = max(raw, max(r for _, r in recs))
    # Flap guard: pods started for a backlog stay until that backlog shrinks. (They were
    # sized as pods still to start; once Ready, the same backlog would need fewer, and
    # dropping them then would bounce the count under a load that has not changed.)
    up_backlog = state.up_backlog if 0 < demand.backlog else None
    guarded = up_backlog is not None and demand.backlog >= up_backlog
    if guarded:
        stabilized = max(stabilized, current)
    if zero_ok:
        stabilized = raw
    shrink = None if guarded else _drain_down(obs, spec, state, demand, recs)
    if shrink is not None and raw <= current:
        raw, stabilized = min(raw, shrink), min(stabilized, shrink)

    if raw > current:
        target = raw
        if spec.max_scale_up_step > 0:
            target = min(target, current + spec.max_scale_up_step)
        reason = _up_reason(demand, obs, spec)
    elif zero_ok and current > 0:
        target = spec.min_replicas
        reason = f"idle {idle_for:.0f}s >= {spec.scale_to_zero_idle_seconds:.0f}s: scaling to zero"
    elif stabilized < current and shrink is not None and stabilized == shrink:
        target = stabilized
        reason = (
            f"backlog {demand.backlog}: {target} ready replicas start it by its deadline"
            if demand.backlog
            else f"backlog 0, {obs.in_flight} running: {target} replicas while they finish"
        )
    elif stabilized < current:
        target = stabilized
        reason = (
            f"backlog {demand.backlog}, arrivals {demand.arrival_rate:.2f}/s: "
            f"{stabilized} replicas suffice"
        )
    else:
        target = current
        if raw < current:
            reason = (
                f"holding {current}: scale-down stabilization "
                f"(arrivals in the {window:.0f}s window need {stabilized})"
            )
        else:
            reason = f"backlog {demand.backlog}, arrivals {demand.arrival_rate:.2f}/s: steady at {current}"
    startup = startup_seconds(obs, spec)
    warm, why, warm_backlog = forecast_floor(obs, spec, state, startup, demand.service_rate)
    if warm > target and why is not None:
        target, reason = warm, why
    target = _clamp(target, spec)
    if current < spec.min_replicas and target == spec.min_replicas:
        reason = f"raised to minReplicas {spec.min_replicas}"
    elif current > spec.max_replicas and target == spec.max_replicas:
        reason = f"lowered to maxReplicas {spec.max_replicas}"
    elif target == spec.max_replicas and demand.replicas > spec.max_replicas:
        reason = f"{_up_reason(demand, obs, spec)}; capped at maxReplicas {spec.max_replicas}"

    bursts, open_burst = track_bursts(obs, spec, state, idle, arrived_since_last(obs, state))
    new_state = PolicyState(
        recommendations=recs,
        idle_since=idle_since,
        last_scale_time=now if target != current else state.last_scale_time,
        arrival_rate_smoothed=lam,
        service_rate_smoothed=mu,
        last_poll_time=now,
        arrival_jump=jump,
        jump_since=jump_since,
        busy_slots=busy_slots(obs),
        starts=record_starts(state, now, current, target, 2.0 * startup + 60.0),
        arrivals=record_arrivals(obs, state, _longest_target(obs, spec)),
        up_backlog=demand.backlog
        if target > current
        else (up_backlog if target == current else None),
        bursts=bursts,
        burst=open_burst,
        warm_backlog=warm_backlog,
    )
    return Decision(
        replicas=target,
        reason=reason,
        state=new_state,
        drain_seconds=demand.drain_seconds,
    )


def _drain_down(
    obs: Observation,
    spec: ScalingSpec,
    state: PolicyState,
    demand: Demand,
    recs: list[tuple[float, int]],
) -> int | None:
    """While a burst drains on Ready pods and nothing arrives, the fewer pods that still
    start its backlog by the real deadlines (`ready_drain_pods`, with the tolerance as
    headroom), never below the stream term, the window or one pod; None when no
    scale-down is due this way. It applies with no backlog as well (one pod, or what the
    window holds, while the last tasks run; zero pods when the TaskQueue would be at zero
    the moment they end, `finishing`), so the result stays monotone in the backlog.

    It overrides the busy floor on purpose: the pods it lets go finish their running
    tasks (the ReplicaSet takes the least busy first, the worker drains on SIGTERM) and
    take no more. The flap guard still applies (the caller skips this while the backlog
    that started pods has not shrunk)."""
    current = obs.replicas
    if current <= 0 or obs.ready_replicas < current or obs.arrival_rate > 0:
        return None
    queues = _queues(obs, spec)
    pods = ready_drain_pods(obs, spec, state, queues, demand.service_rate)
    if pods is None:
        return None
    stream = (demand.arrival_rate + _backlog_rate(queues, spec)) / demand.service_rate
    need = max(pods, stream)
    floor = 0 if finishing(obs, spec) else 1
    shrink = max(floor, math.ceil(need * (1.0 + spec.tolerance) - 1e-9), max(r for _, r in recs))
    return _clamp(shrink, spec) if shrink < current else None


def finishing(obs: Observation, spec: ScalingSpec) -> bool:
    """Only running tasks are left, and the TaskQueue may be at zero the moment they end
    (minReplicas 0, scaleToZeroIdleSeconds 0): nothing queued, arriving or due soon. Then
    the drain-down may let every pod go. The pods let go finish their running tasks (the
    worker drains on SIGTERM) and take no more; keeping one pod kept it empty beside a
    long task on another until the next poll (`idle empty` on heavy-tailed bursts)."""
    return (
        spec.min_replicas <= 0
        and spec.scale_to_zero_idle_seconds <= 0
        and obs.arrival_rate <= 0
        and obs.backlog <= 0
        and all(q.backlog <= 0 for q in _queues(obs, spec))
        and not due_soon(obs, spec)
    )


def _longest_target(obs: Observation, spec: ScalingSpec) -> float:
    """How far back the backlog's ages are worth remembering (a task older than T is late
    whatever its exact age)."""
    return max([spec.target_backlog_seconds] + [_target(q, spec) for q in obs.queues])


def _fell(previous: float, now: float) -> bool:
    """lambda fell to half or less since the last poll: the change detector believed a
    fall, so the arrivals that filled the window are over."""
    return now < previous and now <= previous / 2.0


class BacklogTimePolicy:
    """`decide` as a stateful callable `policy(obs, spec) -> int`, for the simulator."""

    def __init__(self, state: PolicyState | None = None) -> None:
        self.state = state or PolicyState()
        self.last: Decision | None = None

    def __call__(self, obs: Observation, spec: ScalingSpec) -> int:
        self.last = decide(obs, spec, self.state)
        self.state = self.last.state
        return self.last.replicas
