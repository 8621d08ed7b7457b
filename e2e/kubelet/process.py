"""One container run as a local process: start, signal, reap.

Each process leads its own session (so a signal reaches the whole process group, as a
container's processes would all get it). When the main process exits, what is left of its
group is killed too: a container's processes never outlive it.

Nothing outlives the kubelet either, even a SIGKILLed one, in two ways:
- each process asks the kernel for PR_SET_PDEATHSIG=SIGKILL. The kernel sends it when the
  *thread* that forked the child exits, so the kubelet starts containers from its main
  thread only. That covers the main process, not what it starts itself;
- a watchdog process (`GroupWatchdog`) knows every live process group and SIGKILLs them all
  when its stdin, the write end of which only the kubelet holds, reaches EOF: when the
  kubelet exits, however it exits. It ignores SIGINT/SIGTERM/SIGHUP and lives in its own
  session, so a Ctrl-C to the kubelet's terminal does not take it first.
A process that leaves its group with setsid() (a daemon) escapes both; none of ours do.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from e2e.kubelet.command import LaunchSpec

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: preexec must not import


def die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn: SIGKILL this child when the kubelet goes; if it is already gone
    (the race between fork and prctl), go now."""

    def setup() -> None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return setup


WATCHDOG = """
import os, signal, sys
for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, signal.SIG_IGN)
groups = set()
for line in sys.stdin:
    op, _, pgid = line.strip().partition(" ")
    if pgid.isdigit():
        (groups.add if op == "add" else groups.discard)(int(pgid))
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


class GroupWatchdog:
    """Kills every registered process group when the kubelet exits (see the module doc)."""

    def __init__(self, python: str) -> None:
        self._lock = threading.Lock()
        self._broken = False
        self.popen = subprocess.Popen(
            [python, "-c", WATCHDOG],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _send(self, line: str) -> None:
        with self._lock:
            if self._broken or self.popen.stdin is None:
                return
            try:
                self.popen.stdin.write(line.encode())
                self.popen.stdin.flush()
            except (BrokenPipeError, ValueError):
                self._broken = True  # the PR_SET_PDEATHSIG fallback still holds

    def add(self, pgid: int) -> None:
        self._send(f"add {pgid}\n")

    def discard(self, pgid: int) -> None:
        self._send(f"del {pgid}\n")

    def close(self) -> None:
        """Kill what is still registered and let the watchdog go (a clean exit)."""
        with self._lock:
            if self.popen.stdin is not None and not self.popen.stdin.closed:
                try:
                    self.popen.stdin.close()
                except BrokenPipeError:
                    pass
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.popen.kill()


class StartError(Exception):
    """The process could not be started (no such executable, say): exit code 128."""


class Process:
    """A started container process; `exit_code` is set (and `on_exit` called) once it is
    reaped by its waiter thread."""

    def __init__(
        self,
        spec: LaunchSpec,
        log_path: Path,
        on_exit: Callable[[], None],
        watchdog: GroupWatchdog | None = None,
    ) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._watchdog = watchdog
        self.log_path = log_path
        self.exit_code: int | None = None
        self.signal: int | None = None
        self.finished_at: str | None = None
        self.finished_mono: float | None = None
        self._on_exit = on_exit
        try:
            with open(log_path, "ab") as log:
                self.popen = subprocess.Popen(
                    list(spec.argv),
                    env=spec.env,
                    cwd=spec.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=die_with_parent(os.getpid()),  # noqa: PLW1509
                )
        except OSError as error:
            raise StartError(
                f"failed to start {spec.argv[0]!r}: {error.strerror or error}"
            ) from error
        self.pid = self.popen.pid
        if watchdog is not None:
            watchdog.add(self.pid)
        self.started_at = datetime.now(UTC)
        self.started_mono = time.monotonic()
        threading.Thread(target=self._wait, name=f"reap-{self.pid}", daemon=True).start()

    @property
    def alive(self) -> bool:
        return self.exit_code is None

    def _wait(self) -> None:
        code = self.popen.wait()
        # What the main process left behind in its group goes with it.
        self._kill_group(signal.SIGKILL)
        if self._watchdog is not None:
            self._watchdog.discard(self.pid)
        self.finished_mono = time.monotonic()
        self.finished_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if code < 0:
            self.signal = -code
            self.exit_code = 128 - code
        else:
            self.exit_code = code
        self._on_exit()

    def _kill_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def send(self, sig: int) -> None:
        """Signal the whole process group (while the process is alive)."""
        if self.alive:
            self._kill_group(sig)
