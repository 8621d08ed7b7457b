"""CLI: python -m ebbtide_operator.simulate --trace FILE.csv --policy NAME [options]."""

from __future__ import annotations

import argparse
import json
import sys

from .engine import SimConfig
from .run import PolicyError, run_trace
from .trace import TraceError, read_trace


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ebbtide_operator.simulate",
        description="Replay a task trace (CSV: arrival_s,service_s[,queue]) against a policy.",
    )
    p.add_argument("--trace", required=True, help="CSV file, one row per task")
    p.add_argument(
        "--policy", required=True, help="backlog-time, keda, or MODULE:CALLABLE(obs, spec) -> int"
    )
    p.add_argument("--target-backlog-seconds", type=float, default=30.0)
    p.add_argument("--poll-seconds", type=float, default=5.0)
    p.add_argument("--pod-startup-seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--min", type=int, default=0, dest="min_replicas")
    p.add_argument("--max", type=int, default=50, dest="max_replicas")
    p.add_argument(
        "--scale-down-stabilization-seconds",
        type=float,
        default=SimConfig.scale_down_stabilization_seconds,
        help="backlog-time only (default: the CRD's, 60)",
    )
    p.add_argument(
        "--scale-to-zero-idle-seconds",
        type=float,
        default=SimConfig.scale_to_zero_idle_seconds,
        help="backlog-time only (default: the CRD's, 0)",
    )
    p.add_argument(
        "--no-push-activation",
        action="store_true",
        help="ticks only on the poll (the operator wakes a tick when a task lands with no "
        "ready worker; keda never gets push activation)",
    )
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = p.parse_args(argv)
    if args.target_backlog_seconds <= 0:
        p.error(f"--target-backlog-seconds must be > 0, got {args.target_backlog_seconds}")
    if args.poll_seconds <= 0:
        p.error(f"--poll-seconds must be > 0, got {args.poll_seconds}")
    if args.pod_startup_seconds < 0:
        p.error(f"--pod-startup-seconds must be >= 0, got {args.pod_startup_seconds}")
    if args.scale_down_stabilization_seconds < 0 or args.scale_to_zero_idle_seconds < 0:
        p.error("--scale-down-stabilization-seconds and --scale-to-zero-idle-seconds must be >= 0")
    if args.concurrency < 1:
        p.error(f"--concurrency must be >= 1, got {args.concurrency}")
    if not 0 <= args.min_replicas <= args.max_replicas or args.max_replicas < 1:
        p.error(
            f"need 0 <= --min <= --max and --max >= 1, got {args.min_replicas}..{args.max_replicas}"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = SimConfig(
        target_backlog_seconds=args.target_backlog_seconds,
        poll_seconds=args.poll_seconds,
        pod_startup_seconds=args.pod_startup_seconds,
        concurrency=args.concurrency,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        scale_down_stabilization_seconds=args.scale_down_stabilization_seconds,
        scale_to_zero_idle_seconds=args.scale_to_zero_idle_seconds,
        push_activation=not args.no_push_activation,
    )
    try:
        tasks = read_trace(args.trace)
        _, summary = run_trace(tasks, args.policy, config)
    except (TraceError, PolicyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary["trace"] = args.trace
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        width = max(len(k) for k in summary)
        for key, value in summary.items():
            print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
