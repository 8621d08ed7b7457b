"""Policy benchmark: Ebbtide's backlog-time policy vs a KEDA-style baseline vs the oracle.

    make bench-policy        # or: .venv/bin/python bench/policy.py [--no-plots]

For every trace in bench/traces/ it simulates, in the same world (pods, start-up delay,
target; ebbtide_operator.simulate):

- `ebbtide`: the backlog-time policy at the CRD's default settings (the target applies here);
- `ebbtide-tuned`: the same policy with the windows a user could pick (`TUNED`);
- `keda`: a KEDA-style policy whose listLength (and pollingInterval) is tuned per trace to
  the same SLO: the cheapest grid point that meets it, else the one with the best SLO.
  It only polls: KEDA's scalers have no push activation, Ebbtide's operator has;
- `oracle`: the lower bound on replica-seconds (simulate/oracle.py).

It prints the figures side by side with PASS/MISS against the issue's target and writes
docs/policy-bursts.png (bench/plot_policy.py). Deterministic: the same inputs always
print the same numbers.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "worker-runtime"))
sys.path.insert(0, str(ROOT / "bench"))

from ebbtide_operator.policy import ScalingSpec  # noqa: E402
from ebbtide_operator.simulate import (  # noqa: E402
    KedaPolicy,
    Policy,
    SimConfig,
    SimResult,
    read_trace,
    simulate,
    summarize,
)
from ebbtide_operator.simulate.run import make_policy, mean_service_s, oracle_for  # noqa: E402

SLO_TARGET = 0.99
ORACLE_FACTOR = 1.3

# The common world: a 30 s wait target, 5 s polls, pods usable 10 s after they are added,
# 0..50 replicas, the CRD's default scaling settings (the simulator's CLI defaults).
BASE = SimConfig()
# Per-trace worlds: the bulk bursts run with 4 task slots per pod, as in the issue.
TRACES: dict[str, SimConfig] = {
    "steady": BASE,
    "diurnal": BASE,
    "spike": BASE,
    "onoff": BASE,
    "heavytail": BASE,
    "ramp": BASE,
    "bursts": replace(BASE, concurrency=4),
    "sparse": BASE,
    "heavyburst": replace(BASE, concurrency=4),
}
# The windows a user would pick to trade stability for cost (docs/scaling-policy.md).
TUNED = {"scale_down_stabilization_seconds": 0.0, "scale_to_zero_idle_seconds": 0.0}
# KEDA's grid: listLength as a fraction of target x per-pod rate, and pollingInterval.
KEDA_FRACTIONS = (1.0, 0.5, 0.25, 0.125, 0.0625)
KEDA_POLLS = (30.0, 5.0)
PLOTTED = "bursts"  # the trace embedded in docs/scaling-policy.md
ZOOM = (590.0, 680.0)  # its second burst


@dataclass
class Run:
    label: str
    result: SimResult
    summary: dict


def run(tasks, policy, config: SimConfig, label: str, oracle: float) -> Run:
    result = simulate(tasks, policy, config)
    return Run(label, result, summarize(result, tasks, config, label, oracle))


def ebbtide(config: SimConfig, tasks, args: argparse.Namespace) -> Policy:
    policy = make_policy("backlog-time", config, tasks)
    hide, overrides = args.ignore_observed_startup, args.spec
    if not hide and not overrides:
        return policy

    def wrapped(obs, spec):
        return policy(replace(obs, pod_startup_s=None) if hide else obs, replace(spec, **overrides))

    return wrapped


def spec_override(text: str) -> tuple[str, int | float]:
    """`--spec FIELD=VALUE`: one ScalingSpec field for both ebbtide rows (what-ifs)."""
    name, sep, value = text.partition("=")
    numeric = {
        f.name: type(f.default)
        for f in fields(ScalingSpec)
        if type(f.default)
        in (
            int,
            float,
        )  # The world's own figures (the simulator polls and scores with them) are not policy knobs.
        and f.name not in ("min_replicas", "concurrency", "poll_seconds", "target_backlog_seconds")
    }
    if not sep or name not in numeric:
        raise argparse.ArgumentTypeError(
            f"--spec must be FIELD=VALUE with FIELD one of {', '.join(sorted(numeric))}, "
            f"got {text!r}"
        )
    try:
        number = numeric[name](value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--spec {name}: {value!r} is not a {numeric[name].__name__}"
        ) from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"--spec {name}: must be >= 0, got {value!r}")
    return name, number


def keda_tuned(tasks, config: SimConfig, oracle: float) -> Run:
    """The cheapest KEDA setting on the grid that meets the SLO, else the best SLO."""
    rate = config.concurrency / max(mean_service_s(tasks), 1e-9)
    keda_world = replace(config, push_activation=False)  # KEDA's scalers only poll
    best: Run | None = None
    for poll in KEDA_POLLS:
        for fraction in KEDA_FRACTIONS:
            policy = KedaPolicy(
                list_length=config.target_backlog_seconds * rate * fraction, polling_interval=poll
            )
            r = run(tasks, policy, keda_world, f"keda {fraction:g}xL p{poll:.0f}", oracle)
            if best is None or _better(r.summary, best.summary):
                best = r
    assert best is not None
    return best


def _better(a: dict, b: dict) -> bool:
    a_ok, b_ok = a["slo_attainment"] >= SLO_TARGET, b["slo_attainment"] >= SLO_TARGET
    if a_ok != b_ok:
        return a_ok
    if a_ok:
        return a["replica_seconds"] < b["replica_seconds"]
    return a["slo_attainment"] > b["slo_attainment"]


def row(name: str, s: dict) -> str:
    return (
        f"{name:<10} {s['policy']:<17} {s['slo_attainment'] * 100:7.2f}% {s['p99_wait_s']:8.1f} "
        f"{s['replica_seconds']:10.0f} {s['peak_replicas']:5d} {s['scale_events']:6d} "
        f"{s['ratio_to_oracle']:6.2f}"
    )


def oracle_row(s: dict) -> str:
    return f"{'':<10} {'oracle (bound)':<17} {'':>8} {'':>8} {s['oracle_replica_seconds']:10.0f}"


def breakdown_row(name: str, s: dict, work: float) -> str:
    """Where the policy's replica-seconds went, next to what the oracle pays for the same:
    the work (W / concurrency) and, for the rest of its bound, start-up."""
    p = s["pod_seconds"]
    return (
        f"{name:<10} {p['pods_started']:5d} {p['starting']:9.0f} {p['busy']:8.0f} "
        f"{p['idle_queued']:7.0f} {p['idle_beside']:7.0f} {p['idle_empty']:7.0f}   "
        f"{work:8.0f} {s['oracle_replica_seconds'] - work:8.0f}"
    )


BREAKDOWN_HEADER = (
    f"{'':<10} {'':>5} {'ebbtide':>9} {'':>8} {'idle':>7} {'idle':>7} {'idle':>7}   "
    f"{'oracle':>8} {'oracle':>8}\n"
    f"{'trace':<10} {'pods':>5} {'starting':>9} {'busy':>8} {'queued':>7} {'beside':>7} "
    f"{'empty':>7}   {'work':>8} {'start-up':>8}"
)

HEADER = (
    f"{'trace':<10} {'policy':<17} {'SLO':>8} {'p99 wait':>8} {'replica-s':>10} {'peak':>5} "
    f"{'events':>6} {'ratio':>6}"
)


def main() -> int:
    parser = argparse.ArgumentParser(description="backlog-time vs KEDA-style autoscaling")
    parser.add_argument("--traces", default=str(ROOT / "bench" / "traces"))
    parser.add_argument("--plots", default=str(ROOT / "docs"))
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated trace names")
    parser.add_argument(
        "--pod-startup-seconds", type=float, default=None, help="override the worlds' 10 s"
    )
    parser.add_argument(
        "--ignore-observed-startup",
        action="store_true",
        help="hide the observed start-up from Ebbtide (it then plans with its 10 s guess)",
    )
    parser.add_argument(
        "--no-push-activation",
        action="store_true",
        help="ebbtide ticks only on its polls too (the operator's brokers wake it by default)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="generate the traces with this seed (bench/make_traces.py) instead of reading"
        " bench/traces/: how much a figure owes to one draw of the random traces",
    )
    parser.add_argument(
        "--shift-seconds",
        type=float,
        default=0.0,
        help="delay every arrival by this much: the bursts off the 5 s poll grid (they land"
        " on it: every 300 s or 600 s from t = 0)",
    )
    parser.add_argument(
        "--spec",
        type=spec_override,
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a ScalingSpec field for ebbtide (repeatable), e.g. tolerance=0.2",
    )
    args = parser.parse_args()
    args.spec = dict(args.spec)
    started = time.monotonic()
    names = [n for n in TRACES if not args.only or n in args.only.split(",")]
    lines, checks, misses = [HEADER, "-" * len(HEADER)], [], 0
    spent = [BREAKDOWN_HEADER, "-" * len(HEADER)]
    for name in names:
        config = TRACES[name]
        if args.pod_startup_seconds is not None:
            config = replace(config, pod_startup_seconds=args.pod_startup_seconds)
        if args.no_push_activation:
            config = replace(config, push_activation=False)
        if args.seed is not None:
            from make_traces import generate

            tasks = generate(name, args.seed)
        else:
            tasks = read_trace(Path(args.traces) / f"{name}.csv")
        if args.shift_seconds:
            tasks = [replace(t, arrival_s=t.arrival_s + args.shift_seconds) for t in tasks]
        oracle = oracle_for(tasks, config)  # the windows do not change it
        ours = run(tasks, ebbtide(config, tasks, args), config, "ebbtide", oracle)
        tuned_config = replace(config, **TUNED)
        tuned = run(tasks, ebbtide(tuned_config, tasks, args), tuned_config, "", oracle)
        tuned.summary["policy"] = "ebbtide-tuned"
        keda = keda_tuned(tasks, config, oracle)
        runs = [ours, tuned, keda]
        lines += [row(name if i == 0 else "", r.summary) for i, r in enumerate(runs)]
        lines.append(oracle_row(ours.summary))
        work = sum(t.service_s for t in tasks) / config.concurrency
        spent.append(breakdown_row(name, ours.summary, work))
        s = ours.summary
        slo, near = s["slo_attainment"] >= SLO_TARGET, s["ratio_to_oracle"] <= ORACLE_FACTOR
        misses += (not slo) + (not near)
        checks.append(
            f"{name:<10} SLO>=99%: {'PASS' if slo else 'MISS'} ({s['slo_attainment'] * 100:.2f}%)"
            f"  <=1.3x oracle: {'PASS' if near else 'MISS'} ({s['ratio_to_oracle']:.2f}x)"
            f"  keda-tuned pays {keda.summary['replica_seconds'] / s['replica_seconds']:.2f}x"
        )
        if not args.no_plots and name == PLOTTED and args.seed is None and not args.shift_seconds:
            from plot_policy import plot

            plot(name, config, runs, Path(args.plots) / f"policy-{name}.png", ZOOM)
    startup = args.pod_startup_seconds if args.pod_startup_seconds is not None else 10.0
    hidden = " (hidden from ebbtide)" if args.ignore_observed_startup else ""
    print(
        f"World: target {BASE.target_backlog_seconds:.0f} s, poll {BASE.poll_seconds:.0f} s, "
        f"pod start-up {startup:g} s{hidden}, replicas {BASE.min_replicas}.."
        f"{BASE.max_replicas}, concurrency 1 (bursts, heavyburst: 4); push activation for "
        "ebbtide (a task on a queue with no ready worker wakes a tick), polls only for keda"
    )
    print(
        f"ebbtide: the CRD defaults (scaleDownStabilizationSeconds "
        f"{BASE.scale_down_stabilization_seconds:g}, scaleToZeroIdleSeconds "
        f"{BASE.scale_to_zero_idle_seconds:g}); ebbtide-tuned: "
        + ", ".join(f"{k} {v:g}" for k, v in TUNED.items())
        + (
            "\nboth ebbtide rows with " + ", ".join(f"{k}={v:g}" for k, v in args.spec.items())
            if args.spec
            else ""
        )
        + (f"\ntraces generated with seed {args.seed}" if args.seed is not None else "")
        + (f"\nevery arrival {args.shift_seconds:g} s later" if args.shift_seconds else "")
        + "\nkeda: listLength = fraction x target x per-pod rate, pollingInterval p (grid), "
        "HPA defaults; the cheapest that meets the SLO, else the best SLO\n"
    )
    print("\n".join(lines))
    print(
        "\nWhere ebbtide's replica-seconds go (pod-seconds; starting + busy + idle = replica-s):"
        "\nbusy = slot-seconds running a task / slots per pod; idle queued = idle slots while"
        " tasks wait\n(pods let go, finishing their tasks); beside = idle slots of a pod still"
        " running one, nothing\nqueued; empty = a Ready pod with nothing to run until a tick"
        " removes it. The oracle's bound\nis its work plus start-up (it never idles)."
    )
    print("\n".join(spent))
    print("\nTarget (ebbtide at the CRD defaults): SLO >= 99 % and replica-s <= 1.3x the oracle")
    print("\n".join(checks))
    print(f"\n{misses} target(s) missed; {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
