"""bench/ramp.py's arithmetic: a round's figures from the counter's polls, and the
thread limit's and window's moves read off the worker's log."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

from ramp import counted, moves  # noqa: E402


def test_a_round_from_its_polls():
    # 100 tasks: none in the first 0.1 s, 100/s for the next 0.6 s, then 200/s.
    done = [0, 0, 10, 20, 30, 40, 50, 60, 80, 100]
    r = counted([(i / 10, d) for i, d in enumerate(done)], 100)
    assert r.first_s == pytest.approx(0.2)  # the first poll that saw a task done
    assert r.ramp == 60  # done by 0.5 s after it
    assert r.total_s == pytest.approx(0.9)
    assert r.buckets == [0, 10, 10, 10, 10, 10, 10, 20, 20, 0]
    assert r.steady == pytest.approx(80 / 0.7)  # 10 % at 0.2 s, 90 % at 0.9 s


def test_moves_are_timed_from_the_worker_start():
    log = "\n".join(
        [
            'ts=2026-12-04T01:59:59.900Z level=info event="worker started" worker=w',
            'ts=2026-12-04T02:00:00.100Z level=debug event="prefetch window" queue=q window=191',
            'ts=2026-12-04T02:00:00.233Z level=debug event="thread limit" limit=2 was=4',
        ]
    )
    assert moves(log) == ["+0.20 s prefetch window 191", "+0.33 s thread limit 2"]
    assert moves("no start line") == []
