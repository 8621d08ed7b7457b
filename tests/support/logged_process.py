"""Subprocesses whose output goes to a file, never to a pipe.

A worker started with `stderr=PIPE` that nobody reads blocks on its next log line once
the pipe's 64 KiB buffer is full: on a slow machine, where more retries and postponements
are logged, a test then times out for a reason its name does not give. A file never
fills, can be read at any time (`log()`), and its tail is printed when the test fails."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

TAIL_LINES = 40


class LoggedProcess(subprocess.Popen):
    """A Popen whose stdout and stderr are one temporary file."""

    def __init__(self, cmd: Sequence[str], *, cwd: Path | str, env: dict[str, str]) -> None:
        self.log_file = tempfile.TemporaryFile("w+")
        super().__init__(list(cmd), cwd=cwd, env=env, stdout=self.log_file, stderr=self.log_file)

    def log(self) -> str:
        """Everything the process printed so far."""
        self.log_file.flush()
        self.log_file.seek(0)
        return self.log_file.read()

    def tail(self, lines: int = TAIL_LINES) -> str:
        return "".join(self.log().splitlines(keepends=True)[-lines:])


# How long a process may take to stop on SIGTERM when its block ends normally; a worker
# finishes or hands back its tasks within its grace (5 s in the test kits).
STOP_SECONDS = 30


@contextlib.contextmanager
def logged_process(
    cmd: Sequence[str], *, cwd: Path | str, env: dict[str, str], name: str = "worker"
) -> Iterator[LoggedProcess]:
    """Start `cmd`; always reap it; print its log's tail if the body raised.

    A block that ends normally stops the process with SIGTERM, as Kubernetes does, so
    whatever it finished is settled when the block exits: a task records itself before
    its ack, and a SIGKILL between the two would put it back. A block that raised, or a
    process that ignores SIGTERM for STOP_SECONDS, gets SIGKILL."""
    proc = LoggedProcess(cmd, cwd=cwd, env=env)
    try:
        yield proc
    except BaseException:
        print(f"--- {name} {proc.pid} log (tail) ---\n{proc.tail()}")
        raise
    else:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                print(f"--- {name} {proc.pid} ignored SIGTERM for {STOP_SECONDS}s ---")
                print(proc.tail())
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        proc.log_file.close()
