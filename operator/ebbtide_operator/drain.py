"""Drain-aware scale-down: which pods the ReplicaSet should remove first. Pure.

The ReplicaSet deletes pods with the lowest `controller.kubernetes.io/pod-deletion-cost`
first. Heartbeats tell us, per pod, how many tasks its workers are running: idle pods get
the lowest cost, busy pods a cost growing with their running tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ebbtide.stats import WorkerInfo

IDLE_COST = 0
COST_PER_RUNNING_TASK = 100
MAX_COST = 1_000_000  # well inside int32


def deletion_costs(workers: Sequence[WorkerInfo]) -> dict[str, int]:
    """pod name -> deletion cost, for every pod that has a live heartbeat."""
    running: dict[str, int] = {}
    for worker in workers:
        if not worker.pod:
            continue
        busy = worker.running if worker.running > 0 else (1 if worker.busy else 0)
        running[worker.pod] = running.get(worker.pod, 0) + busy
    return {
        pod: IDLE_COST if count == 0 else min(MAX_COST, COST_PER_RUNNING_TASK * count)
        for pod, count in running.items()
    }


def changed_costs(wanted: Mapping[str, int], written: Mapping[str, int]) -> dict[str, int]:
    """Only the annotations that differ from what we last wrote (fewer API calls)."""
    return {pod: cost for pod, cost in wanted.items() if written.get(pod) != cost}
