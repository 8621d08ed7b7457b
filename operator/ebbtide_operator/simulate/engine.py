"""The discrete-event simulator: tasks, pods and a policy polled like the operator does.

Why it is built this way:
- the policy sees exactly what the operator would: a broker snapshot (`ebbtide.stats`)
  of counters the simulated runtime bumps (enqueued on arrival; completed and busy
  slot-seconds on the final ack), turned into an Observation by the operator's own
  `observe.advance` / `observe.build_observation`;
- a pod counts towards replica-seconds from the moment it is added (start-up included)
  until it is gone; a pod removed by scale-down first finishes the tasks it is running;
- the ReplicaSet removes not-ready pods first, then idle ones, then the least busy,
  newest first (Kubernetes' ranking plus Ebbtide's pod-deletion-cost); the same for
  every policy, so the comparison is only about the replica counts;
- push activation (`push_activation`) is the operator's: a task that lands while the
  last tick saw no ready worker (and none is ready now, or the queue was idle, as
  enqueue.lua publishes) runs an extra tick WAKE_LATENCY_S later, at least
  WAKE_MIN_GAP_SECONDS after the previous tick; the poll cadence carries on unchanged.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import SimpleNamespace

from ebbtide.stats import BrokerStats, QueueStats

from ebbtide_operator import observe
from ebbtide_operator.policy import Observation, ScalingSpec
from ebbtide_operator.tick import WAKE_MIN_GAP_SECONDS

from .trace import Task

Policy = Callable[[Observation, ScalingSpec], int]

_COMPLETE, _READY = 0, 1  # same-time order: completions, pods ready, arrivals, then the poll
GIVE_UP_AFTER_S = 86_400.0  # a policy that never serves the backlog ends the run here
WAKE_LATENCY_S = 0.1  # enqueue -> PUBLISH -> the operator's tick reads the broker


@dataclass(frozen=True)
class SimConfig:
    target_backlog_seconds: float = 30.0
    poll_seconds: float = 5.0
    pod_startup_seconds: float = 10.0
    concurrency: int = 1
    min_replicas: int = 0
    max_replicas: int = 50
    # Passed to the backlog-time policy's ScalingSpec (defaults: the CRD's defaults).
    scale_down_stabilization_seconds: float = ScalingSpec.scale_down_stabilization_seconds
    scale_to_zero_idle_seconds: float = ScalingSpec.scale_to_zero_idle_seconds
    # The broker wakes the operator's tick when tasks land and no worker is ready (the
    # operator does this; KEDA's scalers only poll, so its baseline runs without it).
    push_activation: bool = True

    def scaling_spec(self, **overrides) -> ScalingSpec:
        base = dict(
            scale_down_stabilization_seconds=self.scale_down_stabilization_seconds,
            scale_to_zero_idle_seconds=self.scale_to_zero_idle_seconds,
            min_replicas=self.min_replicas,
            max_replicas=self.max_replicas,
            target_backlog_seconds=self.target_backlog_seconds,
            poll_seconds=self.poll_seconds,
            concurrency=self.concurrency,
        )
        base.update(overrides)
        return ScalingSpec(**base)


@dataclass(frozen=True)
class Sample:
    """The world at one poll, after the policy's decision (for plots)."""

    t: float
    arrivals: int  # since the previous poll
    backlog: int
    in_flight: int
    replicas: int
    ready: int


@dataclass
class PodSeconds:
    """Where the replica-seconds went (they add up to SimResult.replica_seconds): what a
    policy can save is the start-up of pods it need not have started and the idle
    slot-seconds, never the work."""

    starting: float = 0.0  # pods added and not Ready yet
    busy: float = 0.0  # slot-seconds running a task / concurrency
    idle_queued: float = 0.0  # idle slots while tasks wait (draining pods take none)
    idle_beside: float = 0.0  # idle slots of a pod still running a task, nothing queued
    idle_empty: float = 0.0  # a Ready pod with nothing to run, until a tick removes it
    pods_started: int = 0  # pods added after t = 0

    def as_dict(self) -> dict[str, float]:
        return {
            "starting": round(self.starting, 1),
            "busy": round(self.busy, 1),
            "idle_queued": round(self.idle_queued, 1),
            "idle_beside": round(self.idle_beside, 1),
            "idle_empty": round(self.idle_empty, 1),
            "pods_started": self.pods_started,
        }


@dataclass
class SimResult:
    waits: list[float]  # per task, in trace order (arrival-sorted)
    replica_seconds: float
    peak_replicas: int
    scale_events: int
    horizon_s: float  # time of the last completion
    unfinished: int = 0
    samples: list[Sample] = field(default_factory=list)
    pod_seconds: PodSeconds = field(default_factory=PodSeconds)

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile of the wait, q in [0, 1]."""
        if not self.waits:
            return 0.0
        ordered = sorted(self.waits)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    def slo_attainment(self, target_s: float) -> float:
        if not self.waits:
            return 1.0
        return sum(1 for w in self.waits if w <= target_s + 1e-9) / len(self.waits)


@dataclass
class _Pod:
    pid: int
    created: float = 0.0
    ready: bool = False
    draining: bool = False
    alive: bool = True
    running: int = 0


class _World:
    def __init__(self, tasks: list[Task], config: SimConfig) -> None:
        self.config = config
        self.tasks = tasks
        self.names = sorted({t.queue for t in tasks}) or ["default"]
        index = {name: i for i, name in enumerate(self.names)}
        self.qidx = [index[t.queue] for t in tasks]
        n_q = len(self.names)
        self.queues: list[deque[int]] = [deque() for _ in range(n_q)]
        self.enqueued = [0] * n_q
        self.completed = [0] * n_q
        self.busy = [0.0] * n_q
        self.in_flight = [0] * n_q
        self.start = [math.nan] * len(tasks)
        self.events: list[tuple[float, int, int, int, int]] = []  # t, kind, seq, a, b
        self.seq = 0
        self.pods: list[_Pod] = []
        self.free_slots: list[int] = []  # heap of pod ids, one entry per free slot
        self.alive = 0
        self.now = 0.0
        self.replica_seconds = 0.0
        self.done = 0
        self.startups: list[float] = []  # creation to Ready, per pod, as the operator sees it
        self.ready_alive = 0  # Ready pods still alive (draining ones included)
        self.empty = 0  # Ready, not draining, running nothing
        self.queued = 0  # tasks waiting in any queue
        self.running = 0  # tasks running on any pod
        self.pod_seconds = PodSeconds()

    def observed_startup(self) -> float | None:
        """The median of the last pods' start-up times (what the operator would report
        from pod conditions); None until a pod started after t = 0 became ready."""
        recent = sorted(self.startups[-9:])
        return recent[len(recent) // 2] if recent else None

    # -- time and events -------------------------------------------------------------
    def advance_to(self, t: float) -> None:
        dt = t - self.now
        self.replica_seconds += self.alive * dt
        if dt > 0:
            acc, slots = self.pod_seconds, self.config.concurrency
            acc.starting += (self.alive - self.ready_alive) * dt
            acc.busy += self.running / slots * dt
            idle = (self.ready_alive - self.running / slots) * dt
            if self.queued:
                acc.idle_queued += idle
            else:
                acc.idle_empty += self.empty * dt
                acc.idle_beside += idle - self.empty * dt
        self.now = t

    def push(self, t: float, kind: int, a: int, b: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, kind, self.seq, a, b))

    # -- pods ------------------------------------------------------------------------
    def active(self) -> list[_Pod]:
        return [p for p in self.pods if p.alive and not p.draining]

    def add_pod(self, ready_now: bool) -> None:
        pod = _Pod(pid=len(self.pods), created=self.now)
        self.pods.append(pod)
        self.alive += 1
        if ready_now:
            self.pod_ready(pod.pid)
        else:
            self.push(self.now + self.config.pod_startup_seconds, _READY, pod.pid)

    def pod_ready(self, pid: int) -> None:
        pod = self.pods[pid]
        if not pod.alive or pod.draining:
            return
        pod.ready = True
        self.ready_alive += 1
        self.empty += 1
        self.startups.append(self.now - pod.created)
        for _ in range(self.config.concurrency):
            heapq.heappush(self.free_slots, pid)

    def remove_pods(self, count: int) -> None:
        ranked = sorted(self.active(), key=lambda p: (p.ready, p.running > 0, p.running, -p.pid))
        for pod in ranked[:count]:
            pod.draining = True
            if pod.running == 0:
                pod.alive = False
                self.alive -= 1
                if pod.ready:
                    self.ready_alive -= 1
                    self.empty -= 1

    def scale_to(self, desired: int) -> bool:
        current = len(self.active())
        if desired > current:
            for _ in range(desired - current):
                self.add_pod(ready_now=self.config.pod_startup_seconds <= 0)
        elif desired < current:
            self.remove_pods(current - desired)
        return desired != current

    # -- tasks -----------------------------------------------------------------------
    def arrive(self, i: int) -> None:
        q = self.qidx[i]
        self.queues[q].append(i)
        self.enqueued[q] += 1
        self.queued += 1

    def complete(self, i: int, pid: int) -> None:
        q = self.qidx[i]
        self.completed[q] += 1
        self.busy[q] += self.tasks[i].service_s
        self.in_flight[q] -= 1
        self.done += 1
        pod = self.pods[pid]
        pod.running -= 1
        self.running -= 1
        if pod.draining:
            if pod.running == 0:
                pod.alive = False
                self.alive -= 1
                self.ready_alive -= 1
        else:
            if pod.running == 0:
                self.empty += 1
            heapq.heappush(self.free_slots, pid)

    def dispatch(self) -> None:
        """Free slots take the oldest head of any queue (FIFO within each queue)."""
        while True:
            while self.free_slots and self.pods[self.free_slots[0]].draining:
                heapq.heappop(self.free_slots)
            if not self.free_slots:
                return
            best = -1
            for q, waiting in enumerate(self.queues):
                if waiting and (
                    best < 0
                    or self.tasks[waiting[0]].arrival_s < self.tasks[self.queues[best][0]].arrival_s
                ):
                    best = q
            if best < 0:
                return
            i = self.queues[best].popleft()
            self.queued -= 1
            pid = heapq.heappop(self.free_slots)
            if self.pods[pid].running == 0:
                self.empty -= 1
            self.pods[pid].running += 1
            self.running += 1
            self.in_flight[best] += 1
            self.start[i] = self.now
            self.push(self.now + self.tasks[i].service_s, _COMPLETE, i, pid)

    # -- what the broker would report ------------------------------------------------
    def snapshot(self) -> BrokerStats:
        queues = {}
        for q, name in enumerate(self.names):
            waiting = self.queues[q]
            queues[name] = QueueStats(
                queue=name,
                ready=len(waiting),
                in_flight=self.in_flight[q],
                oldest_ready_at=self.tasks[waiting[0]].arrival_s if waiting else None,
                enqueued_total=self.enqueued[q],
                completed_total=self.completed[q],
                busy_seconds_total=self.busy[q],
            )
        return BrokerStats(now=self.now, queues=queues)


def simulate(tasks: list[Task], policy: Policy, config: SimConfig) -> SimResult:
    """Run `tasks` (sorted by arrival) under `policy`, polled every config.poll_seconds."""
    world = _World(tasks, config)
    spec = config.scaling_spec()
    queue_specs = SimpleNamespace(
        queues=tuple(
            SimpleNamespace(name=name, target_backlog_seconds=config.target_backlog_seconds)
            for name in world.names
        )
    )
    for _ in range(config.min_replicas):
        world.add_pod(ready_now=True)
    world.startups.clear()  # the initial pods were not observed starting
    initial_pods = len(world.pods)
    n = len(tasks)
    give_up = (tasks[-1].arrival_s if tasks else 0.0) + GIVE_UP_AFTER_S
    next_arrival, next_poll, next_wake = 0, 0.0, math.inf
    last_tick, last_tick_ready = -math.inf, len(world.active())
    previous: BrokerStats | None = None
    rates = observe.Rates()
    peak, scale_events, last_enqueued = len(world.active()), 0, 0
    samples: list[Sample] = []
    while world.done < n:
        t_event = world.events[0][0] if world.events else math.inf
        t_arrival = tasks[next_arrival].arrival_s if next_arrival < n else math.inf
        t = min(t_event, t_arrival, next_poll, next_wake)
        if t > give_up:
            break
        world.advance_to(t)
        if t_event == t:
            _, kind, _, a, b = heapq.heappop(world.events)
            if kind == _COMPLETE:
                world.complete(a, b)
            else:
                world.pod_ready(a)
        elif t_arrival == t:
            q = world.qidx[next_arrival]
            idle = not world.queues[q] and world.in_flight[q] == 0
            world.arrive(next_arrival)
            next_arrival += 1
            if (
                config.push_activation
                and next_wake == math.inf
                and last_tick_ready == 0
                and (idle or not any(p.ready for p in world.active()))
            ):
                next_wake = max(t + WAKE_LATENCY_S, last_tick + WAKE_MIN_GAP_SECONDS)
        else:
            woken = next_wake == t and next_poll != t
            next_wake = math.inf
            last_tick = t
            stats = world.snapshot()
            rates = observe.advance(previous, stats, rates, config.concurrency)
            previous = stats
            active = world.active()
            obs = observe.build_observation(
                stats,
                rates,
                queue_specs,  # type: ignore[arg-type]  # duck-typed: only .queues is read
                replicas=len(active),
                ready_replicas=sum(1 for p in active if p.ready),
            )
            obs = replace(obs, pod_startup_s=world.observed_startup())
            desired = max(config.min_replicas, min(config.max_replicas, int(policy(obs, spec))))
            scale_events += world.scale_to(desired)
            active = world.active()
            peak = max(peak, len(active))
            total = sum(world.enqueued)
            samples.append(
                Sample(
                    t=t,
                    arrivals=total - last_enqueued,
                    backlog=obs.backlog,
                    in_flight=obs.in_flight,
                    replicas=len(active),
                    ready=sum(1 for p in active if p.ready),
                )
            )
            last_enqueued = total
            last_tick_ready = obs.ready_replicas
            if not woken:
                next_poll += config.poll_seconds
        world.dispatch()
    end = world.now
    waits = [
        (s if not math.isnan(s) else end) - task.arrival_s
        for s, task in zip(world.start, tasks, strict=True)
    ]
    return SimResult(
        waits=waits,
        replica_seconds=world.replica_seconds,
        peak_replicas=peak,
        scale_events=scale_events,
        horizon_s=end,
        unfinished=n - world.done,
        samples=samples,
        pod_seconds=replace(world.pod_seconds, pods_started=len(world.pods) - initial_pods),
    )
