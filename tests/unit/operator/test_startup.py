"""Pod start-up from the pods themselves: creation to Ready, each pod once, never a pod
that restarted; the median of the recent samples; restored from status."""

from __future__ import annotations

from ebbtide_operator.startup import (
    RECENT,
    StartupEstimate,
    restored,
    startup_of,
    worth_listing,
)


def pod(
    uid: str,
    created: str = "2026-12-01T10:00:00Z",
    ready_at: str | None = "2026-12-01T10:00:12Z",
    restarts: int = 0,
    ready: str = "True",
) -> dict:
    conditions = [{"type": "PodScheduled", "status": "True"}]
    if ready_at is not None:
        conditions.append({"type": "Ready", "status": ready, "lastTransitionTime": ready_at})
    return {
        "metadata": {"name": f"w-{uid}", "uid": uid, "creationTimestamp": created},
        "status": {
            "conditions": conditions,
            "containerStatuses": [{"name": "worker", "restartCount": restarts}],
        },
    }


def test_creation_to_ready():
    assert startup_of(pod("a")) == 12.0
    assert startup_of(pod("a", ready_at="2026-12-01T10:01:30+00:00")) == 90.0


def test_not_ready_restarted_or_implausible_pods_give_no_sample():
    assert startup_of(pod("a", ready="False")) is None
    assert startup_of(pod("a", ready_at=None)) is None
    assert startup_of(pod("a", restarts=1)) is None  # the Ready time measures the crash
    assert startup_of(pod("a", ready_at="2026-12-01T09:59:00Z")) is None  # before creation
    assert startup_of(pod("a", ready_at="2026-12-01T11:00:00Z")) is None  # stuck, not starting
    assert startup_of(pod("a", created="yesterday")) is None
    assert startup_of({"metadata": {}}) is None


def test_each_pod_counts_once_and_the_estimate_is_the_recent_median():
    estimate = StartupEstimate()
    assert estimate.seconds is None
    assert estimate.observe([pod("a"), pod("b", ready_at=None)]) == [12.0]
    assert estimate.observe([pod("a"), pod("b", ready_at="2026-12-01T10:00:20Z")]) == [20.0]
    assert estimate.observe([pod("a"), pod("b")]) == []  # both already counted
    assert estimate.seconds == 16.0
    slow = pod("c", ready_at="2026-12-01T10:05:00Z")  # one slow image pull
    estimate.observe([slow, pod("d"), pod("e")])
    assert estimate.seconds == 12.0


def test_only_the_recent_samples_count():
    estimate = StartupEstimate()
    estimate.observe([pod(f"old{i}", ready_at="2026-12-01T10:01:00Z") for i in range(RECENT)])
    assert estimate.seconds == 60.0
    estimate.observe([pod(f"new{i}", created=f"2026-12-01T11:00:0{i}Z",
                          ready_at=f"2026-12-01T11:00:1{i}Z") for i in range(RECENT)])  # fmt: skip
    assert estimate.seconds == 10.0 and len(estimate.samples) == RECENT


def test_resumed_from_status_then_measured():
    estimate = StartupEstimate()
    estimate.resume(restored(30.0))
    assert estimate.seconds == 30.0
    estimate.resume(restored(99.0))  # only ever once, before any sample
    estimate.observe([pod("a"), pod("b")])
    assert estimate.seconds == 12.0
    assert [restored(v) for v in (None, "12", True, -1, float("nan"), 1e9)] == [None] * 6


def test_a_rise_in_ready_pods_is_worth_a_pod_list():
    assert worth_listing(3, 1) and not worth_listing(3, 3) and not worth_listing(1, 3)
    assert not worth_listing(3, None)  # the first tick: nothing to compare with
