"""Starting and stopping the harness's long-running processes.

Attached children get PR_SET_PDEATHSIG, so the kernel kills them when the harness dies,
even by SIGKILL: an interrupted test run leaves no etcd or API server behind. Detached
ones (`make cluster-up`) outlive the command and are found again from their pid file."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: ask the kernel to SIGKILL this child when its parent thread exits."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(
    argv: Sequence[str],
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    attached: bool = True,
) -> subprocess.Popen:
    """Start `argv` in its own process group, logging stdout and stderr to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent if attached else None,  # noqa: PLW1509
        )


def start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/PID/stat), to tell a live
    process from a recycled pid; None when it is gone (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def alive(pid: int, started: str | None = None) -> bool:
    now = start_time(pid)
    return now is not None and (started is None or now == started)


def terminate(pid: int, started: str | None, *, grace: float = 10.0) -> bool:
    """SIGTERM the process group of `pid`, SIGKILL it after `grace` seconds. True when it
    was still running."""
    if not alive(pid, started):
        return False
    _signal_group(pid, signal.SIGTERM)
    if not wait_until(lambda: not alive(pid, started), grace):
        _signal_group(pid, signal.SIGKILL)
        wait_until(lambda: not alive(pid, started), 5.0)
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `condition` until it holds or `timeout` passes. (Never reaps with waitpid(-1):
    that would steal exit codes from other Popen objects; zombies count as dead.)"""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
