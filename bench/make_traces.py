"""Generate the policy benchmark's traces (bench/traces/*.csv) from a fixed seed.

The shapes are chosen to stress an autoscaler in the usual ways, with parameters fixed
before any policy was run on them (never tuned to flatter one): each task's service time
is drawn independently; arrivals are a (non-homogeneous) Poisson process, sampled by
thinning. Re-running this script reproduces the committed files byte for byte.

    python bench/make_traces.py [--out bench/traces]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from ebbtide_operator.simulate.trace import Task, write_trace  # noqa: E402

SEED = 20260523
DURATION_S = 1800.0


def poisson_arrivals(
    rng: random.Random, rate: Callable[[float], float], peak: float, duration: float
) -> list[float]:
    """Arrival times of a Poisson process with intensity rate(t) <= peak (thinning)."""
    t, out = 0.0, []
    while True:
        t += rng.expovariate(peak)
        if t >= duration:
            return out
        if rng.random() * peak < rate(t):
            out.append(t)


def exponential(mean: float) -> Callable[[random.Random], float]:
    return lambda rng: rng.expovariate(1.0 / mean)


def pareto(mean: float, alpha: float, cap: float) -> Callable[[random.Random], float]:
    """Pareto(alpha) scaled to `mean` (before the cap), capped at `cap` seconds."""
    scale = mean * (alpha - 1) / alpha
    return lambda rng: min(cap, scale * rng.paretovariate(alpha))


def steady(t: float) -> float:
    return 8.0


def diurnal(t: float) -> float:
    """One compressed 'day' of 1800 s: 1/s at night, 15/s at the peak."""
    return 1.0 + 14.0 * (1 - math.cos(2 * math.pi * t / DURATION_S)) / 2


def spike(t: float) -> float:
    """3/s background, 40/s for two minutes from t = 600 s."""
    return 40.0 if 600.0 <= t < 720.0 else 3.0


def on_off(t: float) -> float:
    """Bursts of 20/s for 60 s every 300 s, silence in between."""
    return 20.0 if t % 300.0 < 60.0 else 0.0


def heavy(t: float) -> float:
    return 5.0


def ramp(t: float) -> float:
    """0.5/s rising linearly to 30/s over 1200 s, held 300 s, then back to 0.5/s in 300 s."""
    if t < 1200.0:
        return 0.5 + 29.5 * t / 1200.0
    if t < 1500.0:
        return 30.0
    return 30.0 - 29.5 * (t - 1500.0) / 300.0


TRACES: dict[str, tuple[Callable[[float], float], float, Callable[[random.Random], float]]] = {
    "steady": (steady, 8.0, exponential(1.0)),
    "diurnal": (diurnal, 15.0, exponential(1.0)),
    "spike": (spike, 40.0, exponential(1.0)),
    "onoff": (on_off, 20.0, exponential(1.0)),
    "heavytail": (heavy, 5.0, pareto(1.0, 1.5, 120.0)),
    "ramp": (ramp, 30.0, exponential(1.0)),
}


@dataclass(frozen=True)
class Bursts:
    """`size` tasks enqueued at once (uniform within `width` s, as a bulk send or a cron
    job would), at the times `starts(rng)` draws; silence in between."""

    size: int
    width: float
    starts: Callable[[random.Random], list[float]]
    service: Callable[[random.Random], float]
    duration: float


def every(period: float, duration: float) -> Callable[[random.Random], list[float]]:
    return lambda rng: [period * k for k in range(int(duration // period))]


def irregular(low: float, high: float, duration: float) -> Callable[[random.Random], list[float]]:
    """Gaps drawn uniformly in [low, high] s: idle long enough for any window to expire."""

    def starts(rng: random.Random) -> list[float]:
        out, t = [], 60.0
        while t < duration:
            out.append(t)
            t += rng.uniform(low, high)
        return out

    return starts


# Bulk bursts, the shape the issue reports the policy over-scaling on.
BURSTS: dict[str, Bursts] = {
    # 500 tasks every 10 min (run with 4 slots per pod: the example).
    "bursts": Bursts(500, 1.0, every(600.0, 3600.0), exponential(1.0), 3600.0),
    # 200 tasks of ~2 s after gaps of 5 to 25 minutes.
    "sparse": Bursts(200, 5.0, irregular(300.0, 1500.0, 7200.0), exponential(2.0), 7200.0),
    # 300 heavy-tailed tasks every 5 min (4 slots per pod).
    "heavyburst": Bursts(300, 2.0, every(300.0, 1800.0), pareto(1.0, 1.5, 60.0), 1800.0),
}


def burst_tasks(rng: random.Random, b: Bursts) -> list[Task]:
    arrivals = sorted(s + rng.uniform(0.0, b.width) for s in b.starts(rng) for _ in range(b.size))
    return [Task(round(a, 3), round(max(b.service(rng), 0.001), 3)) for a in arrivals]


def generate(name: str, seed: int = SEED) -> list[Task]:
    rng = random.Random(f"{seed}:{name}")
    if name in BURSTS:
        return burst_tasks(rng, BURSTS[name])
    rate, peak, service = TRACES[name]
    arrivals = poisson_arrivals(rng, rate, peak, DURATION_S)
    return [Task(round(a, 3), round(max(service(rng), 0.001), 3)) for a in arrivals]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "traces"))
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    for name in [*TRACES, *BURSTS]:
        tasks = generate(name)
        path = out / f"{name}.csv"
        write_trace(path, tasks)
        print(f"{path}: {len(tasks)} tasks, {path.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
