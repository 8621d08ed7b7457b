"""bench/gil_threads.py's table: each row's share of the best rate."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

from gil_threads import Row, table  # noqa: E402


def test_rows_are_shown_against_the_best_thread_count():
    text = table([Row(3, 20_000, 55, 32), Row(8, 10_000, 120, 90)])
    assert "| 3 | 20,000 | 100% | 55 | 32 |" in text
    assert "| 8 | 10,000 | 50% | 120 | 90 |" in text
