"""bench/latency.py's --split-cpus parsing: which CPUs the far side (Redis, the proxy)
and the near side (workers, producers) get, and a clear error for a bad value."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

from latency import CpuSplit, parse_cpu_split  # noqa: E402


def test_far_and_near_cpus():
    assert parse_cpu_split("1:0", {0, 1}) == CpuSplit(frozenset({1}), frozenset({0}))
    assert parse_cpu_split("2,3:0,1", {0, 1, 2, 3}) == CpuSplit(
        frozenset({2, 3}), frozenset({0, 1})
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("1", "expected FAR:NEAR"),
        ("a:0", "CPUs are numbers"),
        ("1:", "CPUs are numbers"),
        ("0,1:1", "CPU 1 is on both sides"),
        ("2:0", "CPU 2 is not available"),
    ],
)
def test_a_bad_split_names_what_is_wrong(text, says):
    with pytest.raises(ValueError, match=says):
        parse_cpu_split(text, {0, 1})
