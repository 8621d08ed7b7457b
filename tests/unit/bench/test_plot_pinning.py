"""bench/plot_pinning.py's data: which rows and rounds the plot draws (pure)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bench"))

from plot_pinning import groups, pinned_name  # noqa: E402


def test_pinned_names():
    assert pinned_name("dramatiq") == "dramatiq-pinned"
    assert pinned_name("ebbtide-p2") == "ebbtide-pinned-p2"


def test_groups_keep_every_round_and_skip_rows_that_did_not_run():
    def row(system: str, broker: str, *runs: float) -> dict:
        return {
            "system": system,
            "broker": broker,
            "processed_per_s": sorted(runs)[len(runs) // 2],
            "extra": {"processed_per_s_runs": list(runs)},
        }

    result = {
        "results": [
            row("dramatiq", "redis", 1.0, 2.0, 3.0),
            row("ebbtide-pinned", "redis", 7.0, 8.0, 9.0),
            {"system": "ebbtide", "broker": "redis", "processed_per_s": None},
        ]
    }
    (only,) = groups(result)
    assert only.label == "Redis, 1 process"
    assert only.rounds == ((1.0, 2.0, 3.0), (), (), (7.0, 8.0, 9.0))


def test_the_committed_result_has_all_three_rows():
    data = json.loads((ROOT / "bench/results/throughput-pinned-2026-12-06.json").read_text())
    found = groups(data)
    assert [g.label for g in found] == [
        "Redis, 1 process",
        "Redis, 2 processes each",
        "RabbitMQ, 1 process",
    ]
    assert all(len(r) == 3 for g in found for r in g.rounds)
