"""The kopf entry point: `kopf run -m ebbtide_operator.main [--all-namespaces | -n NS ...]`.

Handlers stay thin: provisioning is `provision.reconcile`, each TaskQueue's poll loop is
a kopf daemon driving `tick.TaskQueueTicker`; both reach Kubernetes through one
`kube.KubeCluster` (the `cluster.Cluster` protocol). Environment:
  EBBTIDE_OPERATOR_METRICS_PORT  Prometheus port of the operator (default 8081, 0 = off)
  EBBTIDE_BROKER_THREADS         threads for broker reads (default 64)
  EBBTIDE_KUBE_THREADS           threads for API calls (default 16)
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import Any

import kopf

from ebbtide_operator import kube, naming, provision
from ebbtide_operator.broker_io import BrokerReader
from ebbtide_operator.deployment_cache import DeploymentCache
from ebbtide_operator.metrics import OperatorMetrics
from ebbtide_operator.spec import SpecError, parse_spec
from ebbtide_operator.tick import TaskQueueTicker, phase, run_periodically

RESOURCE = (naming.GROUP, naming.VERSION, naming.PLURAL)


class Runtime:
    """Process-wide clients, built at startup (not at import: tests import this module)."""

    cluster: kube.KubeCluster | None = None
    deployments: DeploymentCache = DeploymentCache()
    reader: BrokerReader | None = None
    metrics: OperatorMetrics = OperatorMetrics()


def post_event(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    kopf.event(body, type=type_, reason=reason, message=message[:1000])


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
    settings.posting.level = logging.WARNING  # our Events are explicit, not log echoes
    settings.peering.standalone = True  # one replica; the chart runs exactly one
    settings.persistence.finalizer = "ebbtide.dev/finalizer"
    settings.networking.request_timeout = 60
    await asyncio.to_thread(kube.load_config)
    Runtime.cluster = kube.KubeCluster(
        threads=int(os.environ.get("EBBTIDE_KUBE_THREADS", "16")), deployments=Runtime.deployments
    )
    Runtime.reader = BrokerReader(max_threads=int(os.environ.get("EBBTIDE_BROKER_THREADS", "64")))
    port = int(os.environ.get("EBBTIDE_OPERATOR_METRICS_PORT", "8081"))
    if port:
        Runtime.metrics.serve(port)
        logger.info("operator metrics on :%d/metrics", port)


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if Runtime.reader is not None:
        Runtime.reader.close()
    if Runtime.cluster is not None:
        Runtime.cluster.close()


@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
@kopf.on.resume(*RESOURCE)
async def reconcile(body: kopf.Body, spec: kopf.Spec, logger: logging.Logger, **_: Any) -> None:
    """Create or update the broker and worker objects; an invalid spec is permanent."""
    try:
        parsed = parse_spec(spec)
    except SpecError as error:
        post_event(body, "Warning", "InvalidSpec", str(error))
        raise kopf.PermanentError(str(error)) from error
    assert Runtime.cluster is not None
    report = await provision.reconcile(Runtime.cluster, body, parsed)
    changed = {k: v for k, v in report.items() if v in ("created", "deleted", "replaced")}
    if changed:
        post_event(body, "Normal", "Provisioned", ", ".join(f"{k} {v}" for k, v in changed.items()))
    managed = parsed.broker.managed
    if managed is not None and not managed.persistence.enabled:
        post_event(
            body,
            "Warning",
            "PersistenceDisabled",
            "the managed broker keeps tasks in memory only: a pod restart loses every "
            "queued task (spec.broker.managed.persistence.enabled is false)",
        )
    logger.info("reconciled: %s", report)


@kopf.on.delete(*RESOURCE, optional=True)
async def forget(meta: kopf.Meta, **_: Any) -> None:
    """Owned objects go by garbage collection; only our metric series need dropping."""
    Runtime.metrics.forget(meta["namespace"], meta["name"])


@kopf.on.event(
    "apps",
    "v1",
    "deployments",
    labels={
        "app.kubernetes.io/managed-by": naming.MANAGED_BY,
        "app.kubernetes.io/component": "worker",
    },
)
def watch_worker_deployment(event: kopf.RawEvent, **_: Any) -> None:
    """Feed the informer cache the ticks read replicas from (no GET per tick)."""
    Runtime.deployments.apply(event.get("type"), event["object"])


def poll_seconds(body: Mapping[str, Any]) -> float:
    try:
        return parse_spec(body.get("spec") or {}).scaling.poll_seconds
    except SpecError:
        return 30.0


@kopf.daemon(*RESOURCE, cancellation_timeout=3.0)
async def poll(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """One loop per TaskQueue, on the live body, every spec.scaling.pollSeconds."""
    assert Runtime.cluster is not None and Runtime.reader is not None
    ticker = TaskQueueTicker(Runtime.cluster, Runtime.reader, Runtime.metrics, post_event)
    await run_periodically(
        step=lambda: ticker.tick(body),
        interval=lambda: poll_seconds(body),
        sleep=lambda seconds: stopped.wait(seconds),
        stopped=lambda: bool(stopped),
        lateness=Runtime.metrics.tick_lateness.observe,
        skipped=Runtime.metrics.ticks_skipped.inc,
        initial_delay=phase(body["metadata"].get("uid", ""), poll_seconds(body)),
    )
