"""Policies by name and the summary figures the CLI and the benchmark print."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import replace
from typing import Any

from ebbtide_operator.policy import BacklogTimePolicy

from .engine import Policy, SimConfig, SimResult, simulate
from .keda import KedaPolicy
from .oracle import oracle_replica_seconds
from .trace import Task

BUILT_IN = ("backlog-time", "keda")


class PolicyError(ValueError):
    """--policy names nothing usable; the message says what was wrong."""


def mean_service_s(tasks: list[Task]) -> float:
    return sum(t.service_s for t in tasks) / len(tasks) if tasks else 1.0


def make_policy(name: str, config: SimConfig, tasks: list[Task]) -> Policy:
    """A fresh stateful policy. `keda` is tuned with the trace's true mean service time
    (listLength = target x per-pod rate), the most favourable setting a user could pick."""
    if name == "backlog-time":
        return BacklogTimePolicy()
    if name == "keda":
        per_pod_rate = config.concurrency / max(mean_service_s(tasks), 1e-9)
        return KedaPolicy.tuned(config.scaling_spec(), per_pod_rate)
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise PolicyError(
            f"--policy must be one of {', '.join(BUILT_IN)} or MODULE:CALLABLE, got {name!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PolicyError(f"--policy {name!r}: cannot import {module_name!r}: {exc}") from None
    target = getattr(module, attr, None)
    if target is None:
        raise PolicyError(f"--policy {name!r}: module {module_name!r} has no {attr!r}")
    if inspect.isclass(target):  # a class: one fresh stateful instance per run
        target = target()
    if not callable(target):
        raise PolicyError(f"--policy {name!r}: {attr!r} is not callable")
    return target


def oracle_for(tasks: list[Task], config: SimConfig) -> float:
    return oracle_replica_seconds(
        tasks,
        config.target_backlog_seconds,
        concurrency=config.concurrency,
        pod_startup_s=config.pod_startup_seconds,
        min_replicas=config.min_replicas,
    )


def summarize(
    result: SimResult,
    tasks: list[Task],
    config: SimConfig,
    policy: str = "",
    oracle: float | None = None,
) -> dict[str, Any]:
    """The figures; `oracle` may be passed in when several runs share a trace and world
    (it depends on nothing else, and is a third of a benchmark run's time)."""
    if oracle is None:
        oracle = oracle_for(tasks, config)
    return {
        "policy": policy,
        "tasks": len(tasks),
        "p50_wait_s": round(result.percentile(0.50), 3),
        "p95_wait_s": round(result.percentile(0.95), 3),
        "p99_wait_s": round(result.percentile(0.99), 3),
        "max_wait_s": round(max(result.waits, default=0.0), 3),
        "slo_attainment": round(result.slo_attainment(config.target_backlog_seconds), 5),
        "replica_seconds": round(result.replica_seconds, 1),
        "peak_replicas": result.peak_replicas,
        "scale_events": result.scale_events,
        "oracle_replica_seconds": round(oracle, 1),
        "ratio_to_oracle": round(result.replica_seconds / oracle, 3) if oracle > 0 else None,
        "horizon_s": round(result.horizon_s, 3),
        "unfinished": result.unfinished,
        "pod_seconds": result.pod_seconds.as_dict(),
    }


def run_trace(
    tasks: list[Task], policy_name: str, config: SimConfig
) -> tuple[SimResult, dict[str, Any]]:
    if policy_name == "keda":
        config = replace(config, push_activation=False)  # KEDA's scalers only poll
    result = simulate(tasks, make_policy(policy_name, config, tasks), config)
    return result, summarize(result, tasks, config, policy_name)
