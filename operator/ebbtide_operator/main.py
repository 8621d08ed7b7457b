"""The kopf entry point: `kopf run -m ebbtide_operator.main [--all-namespaces | -n NS ...]`.

Handlers stay thin: provisioning is `provision.reconcile`, each TaskQueue's poll loop is
a kopf daemon driving `tick.TaskQueueTicker`; both reach Kubernetes through one
`kube.KubeCluster` (the `cluster.Cluster` protocol). Broker wake-ups (wake.py) start a
tick early for a TaskQueue with no ready worker. Environment:
  EBBTIDE_OPERATOR_METRICS_PORT  Prometheus port of the operator (default 8081, 0 = off)
  EBBTIDE_BROKER_THREADS         threads for broker reads (default 64)
  EBBTIDE_KUBE_THREADS           threads for API calls (default 16)
  EBBTIDE_SCALE_THREADS          threads (and connections) kept for replica writes alone,
                                 so a scale-up never queues behind status writes (default 4)
  EBBTIDE_STATUS_WRITES_PER_SECOND
                                 routine status writes (figures only) per second, shared by
                                 all TaskQueues (default 20; 0 = no limit; write_budget.py)
  EBBTIDE_OPERATOR_NAMESPACE     the operator's namespace, admitted by managed brokers'
                                 NetworkPolicies (else POD_NAMESPACE, else the pod's own)
  EBBTIDE_OPERATOR_IDENTITY      who the audit log says acted (audit.py)
  EBBTIDE_PEERING, EBBTIDE_PEERING_LIFETIME, EBBTIDE_PEERING_NAMESPACES
                                 2+ replicas, one active (ha.py); unset = standalone
  EBBTIDE_SECRET_REFRESH_SECONDS how often each TaskQueue's broker Secrets are read again
                                 (default 60): a rotated password applies within that
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import kopf
import kubernetes

from ebbtide_operator import gc_pacing, ha, kube, naming, provision, status
from ebbtide_operator.broker_io import BrokerReader
from ebbtide_operator.deployment_cache import DeploymentCache
from ebbtide_operator.metrics import OperatorMetrics
from ebbtide_operator.spec import SpecError, parse_spec
from ebbtide_operator.tick import (
    URL_REFRESH_SECONDS,
    TaskQueueTicker,
    TickOutcome,
    phase,
    run_periodically,
)
from ebbtide_operator.wake import WakeHub
from ebbtide_operator.write_budget import WriteBudget, per_second_from_env

RESOURCE = (naming.GROUP, naming.VERSION, naming.PLURAL)
CONFLICT_RETRY_SECONDS = 20.0  # a name conflict is re-checked this often until it clears
# kopf's own API requests (peering keep-alives and the leave on exit, handler progress,
# finalizers, Events) retry on 403/5xx/timeouts after these pauses: 7 s in all. kopf's
# default (1, 1, 2, 3, 5, 8, 13, 21: 54 s) outlasted the pod's 30 s grace period when a
# replica left a peering whose grant a `helm upgrade` to one replica (or an uninstall) had
# already revoked: the kubelet then SIGKILLed it. A lost request is redone by kopf on the
# next event or keep-alive; our ticks use their own client (kube.py), not these retries.
API_RETRY_BACKOFFS = (1.0, 2.0, 4.0)


class Runtime:
    """Process-wide clients, built at startup (not at import: tests import this module)."""

    cluster: kube.KubeCluster | None = None
    scaler: kube.KubeCluster | None = None  # replica writes only: threads of their own
    budget: WriteBudget = WriteBudget(None)
    write_slots: asyncio.Semaphore | None = None  # status writes in flight, all TaskQueues
    gc_task: asyncio.Task | None = None  # gc_pacing.run
    deployments: DeploymentCache = DeploymentCache()
    reader: BrokerReader | None = None
    wakes: WakeHub | None = None
    metrics: OperatorMetrics = OperatorMetrics()
    operator_namespace: str | None = None
    # TaskQueue uid -> `Kind/name` of the foreign objects its last reconcile left alone;
    # each poll puts them in the status (the tick writes the conditions).
    conflicts: dict[str, list[str]] = {}
    secret_refresh_seconds: float = URL_REFRESH_SECONDS


def secret_refresh_seconds(environ: Mapping[str, str]) -> float:
    """EBBTIDE_SECRET_REFRESH_SECONDS (default 60), refused by name when not a positive
    number of seconds."""
    raw = environ.get("EBBTIDE_SECRET_REFRESH_SECONDS", "")
    if not raw:
        return URL_REFRESH_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"EBBTIDE_SECRET_REFRESH_SECONDS must be seconds > 0, got {raw!r}")
    return value


def positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    """A whole number >= 1 from the environment, refused by name otherwise."""
    raw = environ.get(name, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {raw!r}")
    return value


def post_event(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    kopf.event(body, type=type_, reason=reason, message=message[:1000])


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
    settings.posting.level = logging.WARNING  # our Events are explicit, not log echoes
    settings.persistence.finalizer = "ebbtide.dev/finalizer"
    settings.networking.request_timeout = 60
    settings.networking.error_backoffs = API_RETRY_BACKOFFS  # a bounded exit: see above
    await asyncio.to_thread(kube.load_config)
    try:
        peering = ha.from_env(os.environ)
    except ha.PeeringConfigError as error:  # the start fails, naming the setting
        raise kopf.PermanentError(str(error)) from error
    if peering is None:
        settings.peering.standalone = True  # one replica
    else:
        settings.peering.standalone = False
        settings.peering.mandatory = True  # start paused until the peering is read
        settings.peering.name = peering.name
        settings.peering.clusterwide = peering.clusterwide
        settings.peering.lifetime = peering.lifetime
        settings.peering.priority = ha.priority(time.time(), os.environ.get("POD_NAME", ""))
        await asyncio.to_thread(
            ha.ensure_peering_objects, peering, kubernetes.client.CustomObjectsApi()
        )
        logger.info(
            "peering %r with priority %d: active only while no older replica is alive",
            peering.name,
            settings.peering.priority,
        )
    try:
        Runtime.secret_refresh_seconds = secret_refresh_seconds(os.environ)
        Runtime.budget = WriteBudget(per_second_from_env(os.environ))
        scale_threads = positive_int(os.environ, "EBBTIDE_SCALE_THREADS", 4)
        kube_threads = positive_int(os.environ, "EBBTIDE_KUBE_THREADS", 16)
        broker_threads = positive_int(os.environ, "EBBTIDE_BROKER_THREADS", 64)
    except ValueError as error:  # the start fails, naming the setting
        raise kopf.PermanentError(str(error)) from error
    Runtime.operator_namespace = kube.operator_namespace()
    if Runtime.operator_namespace is None:
        logger.warning(
            "operator namespace unknown (set EBBTIDE_OPERATOR_NAMESPACE): managed brokers' "
            "NetworkPolicies will not admit the operator"
        )
    Runtime.cluster = kube.KubeCluster(threads=kube_threads, deployments=Runtime.deployments)
    Runtime.scaler = kube.KubeCluster(threads=scale_threads, deployments=Runtime.deployments)
    # Half the API threads at most for status writes: the ticks' reads find the rest free.
    Runtime.write_slots = asyncio.Semaphore(max(1, kube_threads // 2))
    Runtime.reader = BrokerReader(max_threads=broker_threads)
    Runtime.wakes = WakeHub()
    Runtime.gc_task = asyncio.get_running_loop().create_task(gc_pacing.run())
    port = int(os.environ.get("EBBTIDE_OPERATOR_METRICS_PORT", "8081"))
    if port:
        Runtime.metrics.serve(port)
        logger.info("operator metrics on :%d/metrics", port)


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if Runtime.gc_task is not None:
        Runtime.gc_task.cancel()
    if Runtime.wakes is not None:
        Runtime.wakes.close()
    if Runtime.reader is not None:
        Runtime.reader.close()
    for cluster in (Runtime.cluster, Runtime.scaler):
        if cluster is not None:
            cluster.close()


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
    report = await provision.reconcile(Runtime.cluster, body, parsed, Runtime.operator_namespace)
    changed = {
        k: v for k, v in report.items() if v in ("created", "deleted", "replaced", "renewed")
    }
    if changed:
        post_event(body, "Normal", "Provisioned", ", ".join(f"{k} {v}" for k, v in changed.items()))
    conflicts = remember_conflicts(body, provision.conflicts(report))
    managed = parsed.broker.managed
    if managed is not None and not managed.persistence.enabled:
        post_event(
            body,
            "Warning",
            "PersistenceDisabled",
            "the managed broker keeps tasks in memory only: a pod restart loses every "
            "queued task (spec.broker.managed.persistence.enabled is false)",
        )
    if managed is not None and not parsed.broker.tls.enabled:
        post_event(
            body,
            "Warning",
            "TLSDisabled",
            "the managed broker listens in plain text: passwords and tasks cross the "
            "network unencrypted (spec.broker.tls.enabled is false)",
        )
    logger.info("reconciled: %s", report)
    if conflicts:
        # Retried until the foreign objects are gone; then ours are created.
        raise kopf.TemporaryError(status.conflict_message(conflicts), delay=CONFLICT_RETRY_SECONDS)


def remember_conflicts(body: Mapping[str, Any], conflicts: list[str]) -> list[str]:
    """Keep the conflicts for the tick's status; a Warning Event when they change."""
    uid = body["metadata"].get("uid", "")
    previous = Runtime.conflicts.get(uid)
    if conflicts:
        Runtime.conflicts[uid] = conflicts
        if conflicts != previous:
            post_event(body, "Warning", "NameConflict", status.conflict_message(conflicts))
    else:
        Runtime.conflicts.pop(uid, None)
    return conflicts


CERT_CHECK_SECONDS = 3600.0  # certificates renew 30 days before expiry: hourly is plenty


@kopf.timer(*RESOURCE, interval=CERT_CHECK_SECONDS, initial_delay=CERT_CHECK_SECONDS)
async def renew_certificates(body: kopf.Body, spec: kopf.Spec, **_: Any) -> None:
    """Between spec changes, a managed broker's certificate still ages: re-run the
    reconcile hourly, which renews a generated certificate within its renewal margin
    (certs.plan) and restarts the broker on a certificate cert-manager renewed (its hash
    is the broker pod's annotation). Nothing is written while everything is current."""
    try:
        parsed = parse_spec(spec)
    except SpecError:
        return
    if not parsed.broker.managed_tls:
        return
    assert Runtime.cluster is not None
    report = await provision.reconcile(Runtime.cluster, body, parsed, Runtime.operator_namespace)
    renewed = [key for key, outcome in report.items() if outcome == "renewed"]
    if renewed:
        post_event(body, "Normal", "CertificateRenewed", ", ".join(renewed))


@kopf.on.delete(*RESOURCE, optional=True)
async def forget(meta: kopf.Meta, **_: Any) -> None:
    """Owned objects go by garbage collection; only our metric series (and remembered
    conflicts) need dropping."""
    Runtime.metrics.forget(meta["namespace"], meta["name"])
    Runtime.conflicts.pop(meta.get("uid", ""), None)


@kopf.on.event("apps", "v1", "deployments", labels=naming.WORKER_WATCH_LABELS)
async def watch_worker_deployment(event: kopf.RawEvent, **_: Any) -> None:
    """Feed the informer cache the ticks read replicas from (no GET per tick). Async:
    a few dict operations, not worth a hop to kopf's executor thread and back."""
    Runtime.deployments.apply(event.get("type"), event["object"])


def poll_seconds(body: Mapping[str, Any]) -> float:
    try:
        return parse_spec(body.get("spec") or {}).scaling.poll_seconds
    except SpecError:
        return 30.0


@kopf.daemon(*RESOURCE, cancellation_timeout=3.0)
async def poll(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """One loop per TaskQueue, on the live body, every spec.scaling.pollSeconds, and at
    once when its broker says a queue got tasks while no worker is ready."""
    assert Runtime.cluster is not None and Runtime.reader is not None
    assert Runtime.wakes is not None
    reader, wakes = Runtime.reader, Runtime.wakes
    uid = body["metadata"].get("uid", "")
    key = f"{body['metadata']['namespace']}/{body['metadata']['name']}"
    ticker = TaskQueueTicker(
        Runtime.cluster,
        reader,
        Runtime.metrics,
        post_event,
        conflicts=lambda _body: Runtime.conflicts.get(uid, ()),
        refresh_seconds=Runtime.secret_refresh_seconds,
        budget=Runtime.budget,
        scaler=Runtime.scaler,
        write_slots=Runtime.write_slots,
    )
    wake = asyncio.Event()
    last: list[TickOutcome] = []
    urgent: list[bool] = [False]  # the next step was woken by the broker

    def woken_by_broker() -> None:
        if not last or last[-1].ready == 0:
            wake.set()

    def woken() -> None:
        urgent[0] = True

    async def step() -> None:
        now_urgent, urgent[0] = urgent[0], False
        last[:] = [await ticker.tick(body, urgent=now_urgent)]
        watch_broker(key, ticker, body, woken_by_broker)

    try:
        await run_periodically(
            step=step,
            interval=lambda: poll_seconds(body),
            sleep=lambda seconds: stopped.wait(seconds),
            stopped=lambda: bool(stopped),
            lateness=Runtime.metrics.tick_lateness.observe,
            skipped=Runtime.metrics.ticks_skipped.inc,
            initial_delay=phase(uid, poll_seconds(body)),
            wake=wake,
            woken=woken,
        )
    finally:
        wakes.unwatch(key)
        reader.release(key)


def watch_broker(
    key: str, ticker: TaskQueueTicker, body: Mapping[str, Any], wake: Callable[[], None]
) -> None:
    """Listen for wake-ups of this TaskQueue's queues at the broker it last read."""
    assert Runtime.wakes is not None
    url = ticker.memory.url
    try:
        spec = parse_spec(body.get("spec") or {})
    except SpecError:
        spec = None
    if url is None or spec is None:
        Runtime.wakes.unwatch(key)
        return
    queues = spec.broker_queues()  # a producer wakes the operator with a shard's name
    Runtime.wakes.watch(key, url, spec.broker.key_prefix, queues, wake, ticker.memory.tls)
