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


TRACES: dict[str, tuple[Callable[[float], float], float, Callable[[random.Random], float]]] = {
    "steady": (steady, 8.0, exponential(1.0)),
    "diurnal": (diurnal, 15.0, exponential(1.0)),
    "spike": (spike, 40.0, exponential(1.0)),
    "onoff": (on_off, 20.0, exponential(1.0)),
    "heavytail": (heavy, 5.0, pareto(1.0, 1.5, 120.0)),
}


def generate(name: str, seed: int = SEED) -> list[Task]:
    rate, peak, service = TRACES[name]
    rng = random.Random(f"{seed}:{name}")
    arrivals = poisson_arrivals(rng, rate, peak, DURATION_S)
    return [Task(round(a, 3), round(max(service(rng), 0.001), 3)) for a in arrivals]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "traces"))
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    for name in TRACES:
        tasks = generate(name)
        path = out / f"{name}.csv"
        write_trace(path, tasks)
        print(f"{path}: {len(tasks)} tasks, {path.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
