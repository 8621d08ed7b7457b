"""bench/cluster.py and bench/cpucap.py's pure pieces: the CFS quota for a cap, finding
the cpu controller and a process's cgroup, spreading shards over masters, the ratios."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

from cluster import Row, evenly_spread, pick_sharded_queue, render_table, with_ratios  # noqa: E402
from cpucap import cfs_settings, cpu_cgroup, cpu_mount  # noqa: E402


def test_a_cap_is_a_quota_per_10_ms_period():
    assert cfs_settings(0.1) == (10_000, 1_000)
    assert cfs_settings(0.25) == (10_000, 2_500)
    assert cfs_settings(1.5) == (10_000, 15_000)


def test_a_small_cap_lengthens_the_period_to_keep_the_kernels_1_ms_quota_floor():
    assert cfs_settings(0.05) == (20_000, 1_000)
    assert cfs_settings(0.03) == (33_334, 1_000)


@pytest.mark.parametrize("cores", [0, -0.5, float("nan"), float("inf"), 0.0005])
def test_a_cap_that_no_quota_gives_is_refused(cores):
    with pytest.raises(ValueError):
        cfs_settings(cores)


MOUNTS = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""


def test_the_cpu_hierarchy_is_found_co_mounted_or_not_and_never_cpuset():
    assert cpu_mount(MOUNTS) == "/sys/fs/cgroup/cpu,cpuacct"
    alone = "cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n"
    assert cpu_mount(alone) == "/sys/fs/cgroup/cpu"


def test_no_cpu_hierarchy_is_none():
    only_v2 = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n"
    cpuset = "cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0\n"
    assert cpu_mount(only_v2) is None
    assert cpu_mount(cpuset) is None


def test_a_process_cgroup_is_its_cpu_line():
    text = "9:name=systemd:/\n3:cpuset:/\n2:cpu,cpuacct:/ebbtide-bench-7001\n0::/\n"
    assert cpu_cgroup(text) == "/ebbtide-bench-7001"
    assert cpu_cgroup("1:cpu:/\n0::/\n") == "/"
    assert cpu_cgroup("0::/user.slice\n") is None


def test_even_spread_allows_one_of_difference_over_every_master():
    assert evenly_spread(["a", "b", "a", "b"], ["a", "b"])
    assert evenly_spread(["a", "b", "c", "a"], ["a", "b", "c"])
    assert not evenly_spread(["a", "a", "b", "b"], ["a", "b", "c"])  # c holds none
    assert not evenly_spread(["a", "a", "a", "b"], ["a", "b"])


def test_the_picked_queue_spreads_its_shards_evenly():
    masters = ["m0", "m1", "m2"]

    def owner(name: str) -> str:  # a stand-in for the cluster's slot map
        return masters[sum(map(ord, name)) % 2]  # never m2: no name spreads over all 3

    def owner3(name: str) -> str:
        return masters[sum(map(ord, name)) * 7 % 3]

    name = pick_sharded_queue(6, masters, owner3)
    shards = [name] + [f"{name}~{i}" for i in range(1, 6)]
    assert sorted(owner3(s) for s in shards) == ["m0", "m0", "m1", "m1", "m2", "m2"]
    with pytest.raises(RuntimeError):
        pick_sharded_queue(3, masters, owner, tries=50)


def row(masters: int, cap: float, rate: float) -> Row:
    return Row(masters, 6, cap, 1000, rate, 30.0, 0.1, 0.9 if cap else None, 0.5, 0.25)


def test_ratios_are_against_the_one_master_row_of_the_same_cap():
    rows = with_ratios([row(1, 0.1, 3000), row(2, 0.1, 6000), row(1, 0, 8000), row(3, 0, 4000)])
    assert [r.vs_one_master for r in rows] == [1.0, 2.0, 1.0, 0.5]
    assert with_ratios([row(2, 0.1, 6000)])[0].vs_one_master is None
    table = render_table(rows)
    assert "| 2 | 6 | 0.1 core | 6,000 | 30.0 | 0.100 (90%) | 0.50 (0.25) | 2.00× |" in table
    assert "| 3 | 6 | none | 4,000 | 30.0 | 0.100 | 0.50 (0.25) | 0.50× |" in table
