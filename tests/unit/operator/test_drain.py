"""Drain-aware scale-down: idle pods get the lowest deletion cost. Pure."""

from __future__ import annotations

from ebbtide.stats import WorkerInfo
from ebbtide_operator import drain


def worker(pod, running, busy=None):
    return WorkerInfo(
        worker_id=f"w-{pod}-{running}",
        pod=pod,
        busy=running > 0 if busy is None else busy,
        running=running,
        concurrency=4,
        queues=("a",),
        last_seen=0.0,
    )


def test_idle_pods_are_cheapest_and_busy_cost_grows():
    costs = drain.deletion_costs(
        [
            worker("idle", 0),
            worker("one", 1),
            worker("three", 2),
            worker("three", 1),
            worker(None, 3),
        ]
    )
    assert costs == {"idle": 0, "one": 100, "three": 300}
    assert costs["idle"] < costs["one"] < costs["three"]


def test_busy_flag_without_running_count_still_costs():
    assert drain.deletion_costs([worker("p", 0, busy=True)]) == {"p": 100}


def test_only_changed_costs_are_written():
    assert drain.changed_costs({"a": 0, "b": 100}, {"a": 0, "b": 200}) == {"b": 100}
