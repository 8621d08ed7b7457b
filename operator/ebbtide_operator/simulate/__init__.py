"""Autoscaling simulator: replay a task trace against a scaling policy.

`python -m ebbtide_operator.simulate --trace FILE.csv --policy backlog-time|keda|MODULE:CALLABLE`
(see `--help`). The pieces: `trace` (CSV in and out), `engine` (the discrete-event
world), `keda` (the baseline), `oracle` (the lower bound), `run` (policy by name,
summary figures).
"""

from __future__ import annotations

from .engine import PodSeconds, Policy, Sample, SimConfig, SimResult, simulate
from .keda import KedaPolicy
from .oracle import oracle_replica_seconds
from .run import make_policy, run_trace, summarize
from .trace import Task, TraceError, read_trace, write_trace

__all__ = [
    "KedaPolicy",
    "PodSeconds",
    "Policy",
    "Sample",
    "SimConfig",
    "SimResult",
    "Task",
    "TraceError",
    "make_policy",
    "oracle_replica_seconds",
    "read_trace",
    "run_trace",
    "simulate",
    "summarize",
    "write_trace",
]
