"""bench/cpucap.py against the real kernel: a capped process (threads and children
included) is in its own cgroup with the quota asked for, and afterwards it is back where
it was and the cgroup is gone, also when the block raised. Needs root and the cgroup v1
cpu controller (what bench/cluster.py needs); skipped without them, except in CI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from cpucap import CpuCapError, cpu_capped, cpu_cgroup, find_controller  # noqa: E402

try:
    ROOT = find_controller()
except CpuCapError as exc:
    # CI machines are root with cgroup v1 controllers: there, a missing one is a failure.
    if os.environ.get("CI") == "true":
        pytest.fail(f"no usable cgroup v1 cpu controller: {exc}", pytrace=False)
    pytest.skip(f"no usable cgroup v1 cpu controller: {exc}", allow_module_level=True)

# A parent with a second thread that forks a child once told to (a line on stdin).
PROGRAM = """
import os, sys, threading, time
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
print("ready", flush=True)
sys.stdin.readline()
child = os.fork()
if child == 0:
    time.sleep(60)
    os._exit(0)
print(child, flush=True)
sys.stdin.readline()
"""


def cgroup_of(pid: int) -> str | None:
    return cpu_cgroup(Path(f"/proc/{pid}/cgroup").read_text())


@pytest.fixture
def proc():
    p = subprocess.Popen(
        [sys.executable, "-c", PROGRAM], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert p.stdout.readline() == "ready\n"
    yield p
    p.kill()
    p.wait()


def test_the_process_its_threads_and_its_children_are_capped_then_released(proc):
    home = cgroup_of(proc.pid)
    name = f"test-{proc.pid}"
    with cpu_capped(proc.pid, 0.05, name) as cap:
        group = ROOT / f"ebbtide-bench-{name}"
        assert cap.path == group
        assert (group / "cpu.cfs_period_us").read_text() == "20000\n"
        assert (group / "cpu.cfs_quota_us").read_text() == "1000\n"
        threads = list(Path(f"/proc/{proc.pid}/task").iterdir())
        assert len(threads) == 2
        assert {cpu_cgroup((t / "cgroup").read_text()) for t in threads} == {f"/{group.name}"}
        proc.stdin.write("fork\n")
        proc.stdin.flush()
        child = int(proc.stdout.readline())
        try:
            assert cgroup_of(child) == f"/{group.name}"
            members = sorted(int(p) for p in (group / "cgroup.procs").read_text().split())
            assert members == sorted([proc.pid, child])  # nothing else was put in it
            assert cap.throttling().periods >= 0
        except BaseException:
            os.kill(child, signal.SIGKILL)
            raise
    try:
        assert not group.exists()
        assert cgroup_of(proc.pid) == home
        assert cgroup_of(child) == home
    finally:
        os.kill(child, signal.SIGKILL)


def test_an_error_inside_still_releases_the_process_and_removes_the_cgroup(proc):
    home = cgroup_of(proc.pid)
    name = f"test-{proc.pid}"
    with pytest.raises(RuntimeError, match="boom"):
        with cpu_capped(proc.pid, 0.1, name):
            raise RuntimeError("boom")
    assert not (ROOT / f"ebbtide-bench-{name}").exists()
    assert cgroup_of(proc.pid) == home


def test_a_stale_cgroup_holding_a_process_is_refused_not_shared(proc):
    name = f"test-{proc.pid}"
    with cpu_capped(proc.pid, 0.1, name):
        with pytest.raises(CpuCapError, match="holds processes"):
            with cpu_capped(proc.pid, 0.1, name):
                pass
    assert not (ROOT / f"ebbtide-bench-{name}").exists()
