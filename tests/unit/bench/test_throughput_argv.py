"""bench/throughput.py's worker command lines: the `-metrics` systems serve /metrics as a
pod does, and the `-p2` ones run two processes; the others record no metrics."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from ebbtide.worker.affinity import cpu_list, parse_affinity

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))

from throughput import worker_argv  # noqa: E402


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


@pytest.mark.parametrize(
    ("system", "processes", "metrics_port"),
    [
        ("ebbtide", None, None),
        ("ebbtide-p2", "2", None),
        ("ebbtide-metrics", None, "0"),
        ("ebbtide-metrics-p2", "2", "0"),
    ],
)
def test_ebbtide_systems(system: str, processes: str | None, metrics_port: str | None):
    argv = worker_argv(system, 8)
    assert _flag(argv, "--processes") == processes
    assert _flag(argv, "--metrics-port") == metrics_port
    assert _flag(argv, "--concurrency") == "8"


def test_pinned_systems_pin_each_process_to_a_cpu_of_this_machine():
    listed = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    assert cpu_list(
        parse_affinity(_flag(worker_argv("ebbtide-pinned", 8), "--cpu-affinity")).cpus
    ) == cpu_list(parse_affinity(listed).cpus)
    two = worker_argv("ebbtide-pinned-p2", 8)
    assert _flag(two, "--processes") == "2" and "--cpu-affinity" in two
    for plain in ("dramatiq", "dramatiq-p2"):
        pinned = worker_argv(plain.replace("dramatiq", "dramatiq-pinned"), 8)
        assert pinned[:2] == ["env", f"BENCH_PIN_CPUS={cpu_list(os.sched_getaffinity(0))}"]
        assert pinned[2:] == worker_argv(plain, 8)


def test_exec_systems_start_their_children_as_new_interpreters():
    for system in ("ebbtide-exec-p2", "ebbtide-pinned-exec-p2"):
        argv = worker_argv(system, 8)
        assert _flag(argv, "--start-children") == "exec" and _flag(argv, "--processes") == "2"
    assert "--cpu-affinity" in worker_argv("ebbtide-pinned-exec-p2", 8)
    assert "--start-children" not in worker_argv("ebbtide-p2", 8)


def test_an_unknown_system_is_named():
    with pytest.raises(ValueError, match="ebbtide-p3"):
        worker_argv("ebbtide-p3", 8)
