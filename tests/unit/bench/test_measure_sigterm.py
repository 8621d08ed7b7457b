"""bench/measure.py's exit_on_sigterm: `kill` of a benchmark runs its cleanup, and a
second SIGTERM arriving during that cleanup does not cut it short (it used to leave a
rabbitmq-server behind)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "bench"

CHILD = f"""
import sys
sys.path.insert(0, {str(BENCH)!r})
from measure import exit_on_sigterm
exit_on_sigterm()
try:
    print("ready", flush=True)
    sys.stdin.readline()  # until the first SIGTERM
finally:
    print("cleaning", flush=True)
    sys.stdin.readline()  # the test sends the second SIGTERM, then a line
    print("cleaned", flush=True)
"""


def test_second_sigterm_during_cleanup_is_ignored():
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGTERM)
        assert child.stdout.readline().strip() == "cleaning"
        child.send_signal(signal.SIGTERM)  # ignored: the cleanup goes on
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "cleaned"
        assert child.wait(timeout=30) == 143
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
