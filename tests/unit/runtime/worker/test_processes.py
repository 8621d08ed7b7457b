"""--processes: parsing, `auto` from the cgroup's CPU limit, the restart backoff and the
supervisor's readiness (worker/processes.py, pure)."""

from __future__ import annotations

import pytest
from ebbtide.worker.processes import (
    RESTART_MAX_S,
    cpu_limit,
    parse_processes,
    read_cpu_limit,
    readiness,
    restart_delay,
)


def test_parse_processes():
    assert parse_processes("1") == 1
    assert parse_processes(" 4 ") == 4
    assert parse_processes("AUTO") is None
    for bad in ("0", "-2", "two", "1.5", "100000"):
        with pytest.raises(ValueError, match="--processes"):
            parse_processes(bad)


@pytest.mark.parametrize(
    ("cpu_max", "quota", "period", "count", "expected"),
    [
        ("200000 100000\n", None, None, 8, 2),  # v2: 2 CPUs
        ("150000 100000", None, None, 8, 2),  # 1.5 CPUs round up
        ("50000 100000", None, None, 8, 1),  # half a CPU: still one process
        ("400000 100000", None, None, 2, 2),  # never past the machine's CPUs
        ("max 100000", None, None, 6, 6),  # v2, no limit
        (None, "300000", "100000", 8, 3),  # v1
        (None, "-1", "100000", 4, 4),  # v1, no limit
        (None, None, None, 3, 3),  # no cgroup files
        ("garbage", None, None, 5, 5),
        ("100 0", None, None, 5, 5),
    ],
)
def test_cpu_limit(cpu_max, quota, period, count, expected):
    assert cpu_limit(cpu_max, quota, period, count) == expected


def test_read_cpu_limit_from_a_cgroup_v1_tree(tmp_path):
    (tmp_path / "cpu,cpuacct").mkdir()
    (tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
    assert read_cpu_limit(tmp_path) == 1


def test_restart_delay_doubles_up_to_a_cap():
    assert [restart_delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert restart_delay(50) == RESTART_MAX_S


def test_readiness_needs_every_process():
    assert readiness(False, [(0, True, "ready"), (1, True, "ready")]) == (
        True,
        "ready (2 processes)",
    )
    ok, why = readiness(False, [(0, True, "ready"), (1, False, "starting")])
    assert not ok and why == "process 1: starting"
    assert readiness(True, [(0, True, "ready")]) == (False, "stopping")
