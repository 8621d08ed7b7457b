"""bench/policy.py --seed: the bench's traces are the generators' draw at SEED, and another
seed runs the same benchmark on another draw (how much a figure owes to one draw)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bench"))

from ebbtide_operator.simulate import read_trace  # noqa: E402
from make_traces import SEED, generate  # noqa: E402


def test_the_committed_trace_is_the_draw_at_the_default_seed():
    assert generate("heavyburst", SEED) == read_trace(ROOT / "bench" / "traces" / "heavyburst.csv")
    assert generate("heavyburst", 1) != generate("heavyburst", SEED)


def run(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "bench" / "policy.py"), "--no-plots", "--only", "bursts"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=120)


def test_seed_runs_the_benchmark_on_another_draw():
    out = run("--seed", "1")
    assert out.returncode == 0, out.stderr
    assert "traces generated with seed 1" in out.stdout
    assert "bursts     SLO>=99%" in out.stdout


def test_a_bad_seed_is_named():
    out = run("--seed", "x")
    assert out.returncode == 2
    assert "--seed: invalid int value: 'x'" in out.stderr
