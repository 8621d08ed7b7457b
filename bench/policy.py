"""Policy benchmark: the backlog-time policy vs a KEDA-style baseline on committed traces.

    make bench-policy        # or: .venv/bin/python bench/policy.py [--no-plots]

For every trace in bench/traces/ it simulates both policies with the same pods, start-up
delay and target (ebbtide_operator.simulate), prints the figures side by side with
PASS/MISS against the targets, and writes docs/policy-<trace>.png. A second table shows
the backlog-time policy at the CRD's default windows, so the effect of that choice is in
plain view. Deterministic: the same inputs always print the same numbers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "worker-runtime"))

from ebbtide_operator.simulate import SimConfig, SimResult, read_trace, run_trace  # noqa: E402

TRACES = ["steady", "diurnal", "spike", "onoff", "heavytail"]
SLO_TARGET = 0.99
ORACLE_FACTOR = 1.3

# The common world: a 30 s wait target, 5 s polls, pods usable 10 s after they are added,
# one task slot per pod, 0..50 replicas (the simulator's CLI defaults).
BASE = SimConfig()
# The backlog-time policy's windows for this benchmark (docs/scaling-policy.md says why):
# its inputs are smoothed and it has hysteresis, so it needs no long scale-down window.
TUNED = SimConfig(scale_down_stabilization_seconds=0.0, scale_to_zero_idle_seconds=30.0)
# The CRD's defaults, shown for comparison.
CRD_DEFAULTS = SimConfig(scale_down_stabilization_seconds=60.0, scale_to_zero_idle_seconds=120.0)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def row(name: str, s: dict) -> str:
    return (
        f"{name:<10} {s['policy']:<13} {s['slo_attainment'] * 100:7.2f}% {s['p99_wait_s']:8.1f} "
        f"{s['replica_seconds']:10.0f} {s['peak_replicas']:5d} {s['scale_events']:6d} "
        f"{s['oracle_replica_seconds']:9.0f} {s['ratio_to_oracle']:6.2f}"
    )


HEADER = (
    f"{'trace':<10} {'policy':<13} {'SLO':>8} {'p99 wait':>8} {'replica-s':>10} {'peak':>5} "
    f"{'events':>6} {'oracle':>9} {'ratio':>6}"
)


def plot(name: str, results: dict[str, SimResult], out: Path, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 7.5), sharex=True)
    first = next(iter(results.values()))
    poll = BASE.poll_seconds
    axes[0].plot(
        [s.t for s in first.samples], [s.arrivals / poll for s in first.samples], color="0.4"
    )
    axes[0].set_ylabel("arrivals /s")
    axes[0].set_title(f"trace '{name}': target wait {target:.0f} s, pod start-up 10 s")
    styles = {"backlog-time": "tab:blue", "keda": "tab:orange"}
    for policy, result in results.items():
        ts = [s.t for s in result.samples]
        colour = styles.get(policy, None)
        axes[1].plot(ts, [s.backlog for s in result.samples], label=policy, color=colour)
        axes[2].step(
            ts, [s.replicas for s in result.samples], where="post", label=policy, color=colour
        )
    axes[1].set_ylabel("backlog (tasks)")
    axes[2].set_ylabel("replicas")
    axes[2].set_xlabel("time (s)")
    for ax in axes[1:]:
        ax.legend(loc="upper right")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description="backlog-time vs KEDA-style autoscaling")
    parser.add_argument("--traces", default=str(ROOT / "bench" / "traces"))
    parser.add_argument("--plots", default=str(ROOT / "docs"))
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args()
    started = time.monotonic()
    lines = [HEADER, "-" * len(HEADER)]
    checks: list[str] = []
    default_lines = [HEADER, "-" * len(HEADER)]
    misses = 0
    for name in TRACES:
        tasks = read_trace(Path(args.traces) / f"{name}.csv")
        ours, ours_s = run_trace(tasks, "backlog-time", TUNED)
        keda, keda_s = run_trace(tasks, "keda", BASE)
        _, default_s = run_trace(tasks, "backlog-time", CRD_DEFAULTS)
        lines += [row(name, ours_s), row("", keda_s)]
        default_lines.append(row(name, default_s))
        slo = ours_s["slo_attainment"] >= SLO_TARGET
        cheaper = ours_s["replica_seconds"] <= keda_s["replica_seconds"]
        near = ours_s["ratio_to_oracle"] <= ORACLE_FACTOR
        misses += (not slo) + (not cheaper) + (not near)
        checks.append(
            f"{name:<10} SLO>=99%: {verdict(slo)} ({ours_s['slo_attainment'] * 100:.2f}%)  "
            f"replica-s<=keda: {verdict(cheaper)} ({ours_s['replica_seconds']:.0f} vs "
            f"{keda_s['replica_seconds']:.0f})  within 1.3x oracle: {verdict(near)} "
            f"({ours_s['ratio_to_oracle']:.2f}x)"
        )
        if not args.no_plots:
            plot(
                name,
                {"backlog-time": ours, "keda": keda},
                Path(args.plots) / f"policy-{name}.png",
                BASE.target_backlog_seconds,
            )
    print(
        f"World: target {BASE.target_backlog_seconds:.0f} s, poll {BASE.poll_seconds:.0f} s, "
        f"pod start-up {BASE.pod_startup_seconds:.0f} s, concurrency {BASE.concurrency}, "
        f"replicas {BASE.min_replicas}..{BASE.max_replicas}"
    )
    print(
        "backlog-time: scaleDownStabilizationSeconds 0, scaleToZeroIdleSeconds 30; "
        "keda: listLength = target x per-pod rate, HPA defaults\n"
    )
    print("\n".join(lines))
    print("\nTargets (backlog-time):")
    print("\n".join(checks))
    print("\nbacklog-time at the CRD's default windows (stabilization 60 s, idle 120 s):")
    print("\n".join(default_lines))
    print(f"\n{misses} target(s) missed; {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
