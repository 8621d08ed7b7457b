"""A lower bound on replica-seconds for ANY policy, even one that knows the future.

Every schedule in which each task waits at most T pays at least:

1. the work itself: a replica offers `concurrency` task-slots, so replica-seconds
   >= W / concurrency, W = sum of service times (a pod can do no more than that);
2. start-up or idling: each pod beyond the `min_replicas` that exist at t = 0 is paid
   for `pod_startup_seconds` before it can do anything. Some instant needs at least
   K task-slots, so at least ceil(K / concurrency) - min_replicas pods were added.
   The same holds after every *quiet gap* -- an interval in which no task can be in the
   system in any feasible schedule, because every earlier task had to finish by
   arrival + T + service before the next one arrives: each pod needed after the gap
   either idled through it or was started after it, so it costs min(gap, start-up);
3. the floor: `min_replicas` pods for the whole run (>= the last arrival + its service).

K comes from two arguments over the tasks arriving in a window [a, a + L): they cannot
start before a and must start by their arrival + T, so
- (fluid) they all finish by a + L + T + s_max (s_max: their longest service time), and
  their work must fit in that span: K >= W[a, a+L) / (L + T + s_max);
- (lanes, `lane_slots`) on each slot, every such task but the last one must finish
  before the last one starts, by a + L + T: W - (the K longest) <= K * (L + T).
We take the maximum over 1 s-aligned windows of L = 1, 2, 4, ... seconds.

bound = max(W / concurrency
            + sum over segments of min(gap, startup) * max(0, ceil(K_seg / c) - min),
            min_replicas * (last arrival + its service))

It is a bound, not a schedule: it ignores that tasks are indivisible and that a pod
must stay up while any slot is busy, so real policies cannot reach it exactly.
"""

from __future__ import annotations

import math
from collections import deque

from .trace import Task


def peak_slots(tasks: list[Task], target_s: float) -> float:
    """K: a lower bound on the task-slots needed at some instant (`lane_slots` per window,
    never below the fluid bound W / (L + T + s_max))."""
    if not tasks:
        return 0.0
    horizon = int(math.ceil(max(t.arrival_s for t in tasks))) + 1
    work = [0.0] * horizon
    longest = [0.0] * horizon
    services: list[list[float]] = [[] for _ in range(horizon)]
    for t in tasks:
        b = int(t.arrival_s)
        work[b] += t.service_s
        longest[b] = max(longest[b], t.service_s)
        services[b].append(t.service_s)
    prefix = [0.0]
    for w in work:
        prefix.append(prefix[-1] + w)
    best, length = 0.0, 1
    while length <= horizon:
        window: deque[int] = deque()  # sliding max of `longest` over [a, a + length)
        for end in range(horizon):
            while window and longest[window[-1]] <= longest[end]:
                window.pop()
            window.append(end)
            start = end - length + 1
            if window[0] < start:
                window.popleft()
            if start < 0:
                continue
            w = prefix[end + 1] - prefix[start]
            if w <= 0:
                continue
            best = max(best, w / (length + target_s + longest[window[0]]))
            if math.ceil(w / (length + target_s) - 1e-9) > best:  # the lanes may say more
                span = [s for b in range(start, end + 1) for s in services[b]]
                best = max(best, lane_slots(span, length + target_s))
        length *= 2
    return best


def lane_slots(services: list[float], span: float) -> int:
    """The fewest slots that can start every one of these tasks within `span` seconds.

    Any schedule's tasks split into lanes, one per slot, each a sequence of tasks. In a
    lane, every task but the last must finish before the last one starts, so within the
    span: the lane's work minus its last task is at most `span`. Summed over K lanes,
    W - (the K longest tasks) <= K * span. The least K that allows it is a bound; it is
    the fluid one when all tasks are alike, and tighter when a few long tasks would
    otherwise be spread over the whole span (`heavyburst`: 2 pods per burst, not 1)."""
    total = sum(services)
    ordered = sorted(services, reverse=True)
    longest = 0.0
    for k, s in enumerate(ordered, start=1):
        longest += s
        if k * span + longest >= total - 1e-9:
            return k
    return len(ordered)


def segments(tasks: list[Task], target_s: float) -> list[tuple[float, list[Task]]]:
    """Split the trace at quiet gaps: where the next arrival comes after every earlier
    task must have finished (arrival + T + service), no schedule can have any task in the
    system. Returns (gap before the segment, tasks); the first gap is infinite."""
    out: list[tuple[float, list[Task]]] = []
    busy_until = -math.inf
    for task in sorted(tasks, key=lambda t: t.arrival_s):
        if task.arrival_s > busy_until:
            out.append((task.arrival_s - busy_until, []))
        out[-1][1].append(task)
        busy_until = max(busy_until, task.arrival_s + target_s + task.service_s)
    return out


def oracle_replica_seconds(
    tasks: list[Task],
    target_s: float,
    concurrency: int = 1,
    pod_startup_s: float = 0.0,
    min_replicas: int = 0,
) -> float:
    if not tasks:
        return 0.0
    work = sum(t.service_s for t in tasks) / concurrency
    idle_or_startup = 0.0
    for gap, segment in segments(tasks, target_s):
        pods = math.ceil(peak_slots(segment, target_s) / concurrency - 1e-9)
        idle_or_startup += min(gap, pod_startup_s) * max(0, pods - min_replicas)
    floor = min_replicas * max(t.arrival_s + t.service_s for t in tasks)
    return max(work + idle_or_startup, floor)
