"""bench/cpu_per_task.py's arithmetic: one window's rate and CPU per task, and a clear
error for a window in which nothing was done."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

from cpu_per_task import CpuSample, per_task, render, runs  # noqa: E402


def test_per_task_splits_user_kernel_and_broker():
    before = CpuSample(at=10.0, done=2_000, worker_user=1.0, worker_system=0.5, broker=3.0)
    after = CpuSample(at=12.0, done=12_000, worker_user=2.0, worker_system=1.5, broker=3.8)
    r = per_task(before, after)
    assert r.rate == pytest.approx(5_000)
    assert r.worker_us == pytest.approx(200)  # 2 s of CPU over 10,000 tasks
    assert r.worker_system_us == pytest.approx(100)
    assert r.broker_us == pytest.approx(80)
    assert r.worker_share == pytest.approx(1.0)  # one core, the GIL's limit
    assert "| 1 | ebbtide | 5,000 | 200 | 100 | 80 | 100% |" in render([(1, "ebbtide", r)])


def test_an_empty_window_is_an_error_not_a_zero_division():
    s = CpuSample(at=1.0, done=5, worker_user=0, worker_system=0, broker=0)
    with pytest.raises(ValueError, match="no tasks done in the window"):
        per_task(s, s)


def test_a_pinned_row_follows_each_system():
    assert runs(["dramatiq", "ebbtide"], None) == [("dramatiq", None), ("ebbtide", None)]
    assert runs(["dramatiq", "ebbtide"], 0) == [
        ("dramatiq", None),
        ("dramatiq", 0),
        ("ebbtide", None),
        ("ebbtide", 0),
    ]
