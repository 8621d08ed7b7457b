"""One TaskQueue's poll: read the broker, decide, scale, report.

`TaskQueueTicker.tick(body)` is the whole per-poll step and holds the memory between
polls (previous snapshot, smoothed rates, policy state, last written status). It talks to
Kubernetes only through the `Cluster` protocol (cluster.py) and to the broker only through
`BrokerReader`, so the same engine runs under kopf and in the bench. It writes the
TaskQueue's status and the pods' deletion costs itself; the worker Deployment (recreate,
repair, scale) it leaves to provision.py, the only writer of the objects a TaskQueue owns.
A failing step is logged, counted and reported in the conditions; it never raises.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ebbtide.brokers.tls import BrokerTLS, is_tls_url
from ebbtide.shards import ShardedStats, sum_shards
from ebbtide.stats import BrokerStats

from ebbtide_operator import (
    broker_admin,
    credentials,
    drain,
    fence,
    naming,
    observe,
    pod_health,
    provision,
    shards,
    startup,
    tls_files,
)
from ebbtide_operator import status as status_mod
from ebbtide_operator.broker_io import BrokerReader, BrokerUnreachable
from ebbtide_operator.build import worker
from ebbtide_operator.cluster import Cluster, Conflict, EventSink
from ebbtide_operator.metrics import OperatorMetrics
from ebbtide_operator.policy import Decision, Observation, PolicyState, ScalingSpec, decide
from ebbtide_operator.spec import SpecError, TaskQueueSpec, parse_spec
from ebbtide_operator.status_writer import StatusWriter
from ebbtide_operator.write_budget import WriteBudget

log = logging.getLogger(__name__)

# Re-read the broker Secrets this often (rotations); EBBTIDE_SECRET_REFRESH_SECONDS.
URL_REFRESH_SECONDS = 60.0
MAX_STATS_TIMEOUT = 5.0


def phase(uid: str, poll_seconds: float) -> float:
    """A stable per-TaskQueue offset in [0, poll): ticks of many TaskQueues interleave."""
    return (zlib.crc32(uid.encode()) % 1000) / 1000 * poll_seconds


def stats_timeout(poll_seconds: float) -> float:
    """Leave most of the poll for the read, never more than MAX_STATS_TIMEOUT."""
    return max(0.5, min(MAX_STATS_TIMEOUT, 0.8 * poll_seconds))


def scale_message(before: int, after: int, reason: str) -> tuple[str, str]:
    """('ScaledUp', '2→6: backlog 1200, drain 95s > target 30s')."""
    return ("ScaledUp" if after > before else "ScaledDown"), f"{before}→{after}: {reason}"


@dataclass
class TickOutcome:
    replicas_before: int = 0
    replicas_after: int = 0
    ready: int = 0  # ready worker pods: none means a broker wake-up is worth a tick
    decision: Decision | None = None
    broker_error: str | None = None
    status_written: bool = False
    seconds: float = 0.0


@dataclass
class _Memory:
    previous: BrokerStats | None = None
    rates: observe.Rates = field(default_factory=observe.Rates)
    last_obs: Observation | None = None
    policy_state: PolicyState | None = None
    written: dict[str, Any] | None = None
    written_at: float | None = None
    url: str | None = None
    url_read_at: float = 0.0
    url_ref: tuple[str, str] | None = None  # (Secret, key) that `url` was read from
    tls: BrokerTLS | None = None  # the CA (and client cert) the broker URL needs
    tls_for: bool = False  # whether `tls` was read for a TLS URL
    tls_read_at: float = 0.0
    costs: dict[str, int] = field(default_factory=dict)
    last_scale_time: str | None = None
    last_scale_reason: str | None = None
    # ((generation, credentials, drained shards), template)
    template: tuple[Any, dict[str, Any]] | None = None
    credentials_version: str | None = None  # the worker credential's, for the pod template
    applied: str | None = None  # fingerprint of the role credentials the live broker has
    worker_conflict: str | None = None  # `Deployment/<name>-worker` when it is not ours
    startup: startup.StartupEstimate = field(default_factory=startup.StartupEstimate)
    last_ready: int | None = None  # ready pods at the last tick: a rise is worth a pod list
    synced: tuple[Any, ...] | None = None  # _sync_key of the Deployment last found in order
    shards: dict[str, int] = field(default_factory=dict)  # drained per queue (status.shards)


def tls_state(spec: TaskQueueSpec, url: str | None) -> str:
    """The Encrypted condition's reason: from the spec for a managed broker, from the
    URL's scheme for an external one."""
    if spec.broker.managed is not None:
        if not spec.broker.tls.enabled:
            return status_mod.TLS_DISABLED
        if spec.broker.tls.issuer is not None:
            return status_mod.TLS_CERT_MANAGER
        return status_mod.TLS_GENERATED
    if url is None:
        return status_mod.TLS_UNKNOWN
    return status_mod.TLS_EXTERNAL if is_tls_url(url) else status_mod.TLS_EXTERNAL_PLAIN


class TaskQueueTicker:
    def __init__(
        self,
        cluster: Cluster,
        reader: BrokerReader,
        metrics: OperatorMetrics,
        events: EventSink,
        clock: Callable[[], float] = time.time,
        policy: Callable[[Observation, Any, PolicyState], Decision] = decide,
        conflicts: Callable[[Mapping[str, Any]], Sequence[str]] = lambda _body: (),
        refresh_seconds: float = URL_REFRESH_SECONDS,
        files: tls_files.TLSFiles | None = None,
        budget: WriteBudget | None = None,
        scaler: Cluster | None = None,
        write_slots: asyncio.Semaphore | None = None,
        writer: str | None = None,
    ) -> None:
        """`conflicts(body)`: the foreign objects the last reconcile found (main.py);
        `refresh_seconds`: how often the broker Secrets are read again (a rotation is
        applied within that); `files`: where the CA and client certificates read from
        Secrets are written; `budget`: the operator's shared pace of routine status
        writes (write_budget.py; None: every change is written at once); `scaler`: the
        cluster the replica writes go through (main.py gives them API threads of their
        own, so a scale-up never queues behind other TaskQueues' status writes);
        `write_slots`: write the status behind the tick (status_writer.py), with at most
        that many writes of all TaskQueues in flight; None: the tick awaits its write;
        `writer`: this operator in `status.writer` (fence.py)."""
        self.budget = budget
        self.write_slots = write_slots
        self.behind: StatusWriter | None = None
        self.scaler = scaler or cluster
        self.fence = fence.StatusFence(writer or fence.default_writer())
        self.refresh_seconds = refresh_seconds
        self.tls_files = files or tls_files.shared()
        self.cluster = cluster
        self._lane: Cluster = cluster  # this tick's API calls: `cluster`, or `scaler` when urgent
        self.reader = reader
        self.metrics = metrics
        self.events = events
        self.clock = clock
        self.policy = policy
        self.conflicts = conflicts
        self.memory = _Memory()

    # --- the step ---------------------------------------------------------------------

    async def tick(self, body: Mapping[str, Any], urgent: bool = False) -> TickOutcome:
        """One poll. `urgent`: a broker woke this tick (a task for a TaskQueue with no
        ready worker): all of its API calls go through `scaler`'s threads, so they never
        queue behind the other TaskQueues' routine calls."""
        started = time.perf_counter()
        self._lane = self.scaler if urgent else self.cluster
        outcome = TickOutcome()
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        try:
            await self._tick(body, namespace, name, outcome)
        except Exception:
            log.exception("tick of %s/%s failed", namespace, name)
            self.metrics.error(namespace, name, "tick")
        outcome.seconds = time.perf_counter() - started
        self.metrics.tick_seconds.observe(outcome.seconds)
        return outcome

    async def _tick(
        self, body: Mapping[str, Any], namespace: str, name: str, outcome: TickOutcome
    ) -> None:
        memory = self.memory
        now = self.clock()
        self._remember_status(body)
        try:
            spec = parse_spec(body.get("spec") or {})
        except SpecError as error:
            await self._write_status(body, now, self._invalid_status(body, str(error), now))
            return
        scaling = spec.scaling
        drained = shards.drained(body.get("status"), spec)
        if spec.broker.managed is not None:
            # Before the Deployment's drift check: a rotation changes the pod template.
            await self._refresh_credentials(body, spec, now)

        # The broker and the API server are read concurrently: the tick waits for the
        # slower of the two, not their sum.
        stats_or_error, deployment = await asyncio.gather(
            self._read_stats(namespace, name, spec, now, drained),
            self._worker_deployment(body, namespace, name, spec),
        )
        stats: BrokerStats | None = None
        sharded: ShardedStats | None = None
        if isinstance(stats_or_error, BrokerUnreachable):
            outcome.broker_error = str(stats_or_error)
            memory.url_read_at = 0.0  # re-read the Secret next time: it may have changed
            self.metrics.error(namespace, name, "broker")
        else:
            sharded = sum_shards(stats_or_error)  # the policy sees logical queues only
            stats = sharded.stats
        memory.shards = shards.next_drained(spec, drained, sharded)
        replicas = int((deployment or {}).get("spec", {}).get("replicas") or 0)
        ready = int((deployment or {}).get("status", {}).get("readyReplicas") or 0)
        worker_problem = await self._worker_problem(namespace, name, deployment, ready)
        memory.last_ready = ready
        outcome.replicas_before = outcome.replicas_after = replicas
        outcome.ready = ready

        if stats is not None:
            memory.rates = observe.advance(
                memory.previous, stats, memory.rates, scaling.concurrency
            )
            memory.previous = stats
            obs = observe.build_observation(stats, memory.rates, spec, replicas, ready)
            obs = replace(_with_local_time(obs, now), pod_startup_s=memory.startup.seconds)
            memory.last_obs = obs
        else:
            obs = observe.unreachable_observation(now, memory.last_obs, replicas, ready)

        decision: Decision | None = None
        policy_error: str | None = None
        prior = memory.policy_state or PolicyState()
        try:
            decision = self.policy(obs, scaling, prior)
            memory.policy_state = decision.state
        except Exception as error:
            log.exception("policy failed for %s/%s", namespace, name)
            self.metrics.error(namespace, name, "policy")
            policy_error = f"policy error: {type(error).__name__}: {error}"[:200]
        outcome.decision = decision

        if decision is not None and deployment is not None and not scaling.paused:
            try:
                await self._scale(body, scaling, decision, deployment, stats, now, outcome)
            except Conflict:
                # The Deployment moved on since the decision: decide again from a fresh
                # read and the same prior state, once; a second 409 skips this tick.
                self.metrics.error(namespace, name, "scale-conflict")
                deployment = await self._lane.read("Deployment", namespace, deployment_name(body))
                decision = outcome.decision = None
                memory.policy_state = prior
                if deployment is not None:
                    replicas = int(deployment.get("spec", {}).get("replicas") or 0)
                    ready = int(deployment.get("status", {}).get("readyReplicas") or 0)
                    obs = replace(obs, replicas=replicas, ready_replicas=ready)
                    outcome.replicas_before = outcome.replicas_after = replicas
                    outcome.ready = ready
                    decision = outcome.decision = self.policy(obs, scaling, prior)
                    memory.policy_state = decision.state
                    try:
                        await self._scale(body, scaling, decision, deployment, stats, now, outcome)
                    except Conflict:
                        log.info(
                            "%s/%s: the Deployment changed twice, no scale this tick",
                            namespace,
                            name,
                        )
                        self.metrics.error(namespace, name, "scale-conflict")
                        memory.policy_state = prior

        self.metrics.observe(
            namespace,
            name,
            obs,
            decision,
            outcome.replicas_after,
            ready,
            broker_up=stats is not None,
            min_replicas=scaling.min_replicas,
            max_replicas=scaling.max_replicas,
        )
        managed = spec.broker.managed
        health = status_mod.Health(
            policy_error=policy_error,
            broker_error=outcome.broker_error,
            deployment_exists=deployment is not None,
            paused=scaling.paused,
            target_seconds=scaling.target_backlog_seconds,
            persistence_disabled=managed is not None and not managed.persistence.enabled,
            tls=tls_state(spec, memory.url),
            eviction_policy=self.reader.eviction_policy(self.memory.url or ""),
            external_broker=managed is None,
            name_conflicts=self._reconcile_conflicts(body, name),
            worker_conflict=memory.worker_conflict,
            worker_problem=worker_problem,
        )
        new_status = self._status(
            body,
            spec,
            health,
            obs if stats is not None else None,
            decision,
            outcome.replicas_after,
            ready,
            now,
        )
        outcome.status_written = await self._write_status(body, now, new_status)

    # --- pieces -------------------------------------------------------------------------

    async def _scale(
        self,
        body: Mapping[str, Any],
        scaling: ScalingSpec,
        decision: Decision,
        deployment: Mapping[str, Any],
        stats: BrokerStats | None,
        now: float,
        outcome: TickOutcome,
    ) -> None:
        """Apply the decision to the Deployment it was made from: the write carries that
        resourceVersion (Conflict when it moved on)."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        replicas = int(deployment.get("spec", {}).get("replicas") or 0)
        target = max(scaling.min_replicas, min(scaling.max_replicas, decision.replicas))
        if target == replicas:
            return
        if target < replicas and stats is not None:
            await self._set_deletion_costs(namespace, name, stats)
        reason, message = scale_message(replicas, target, decision.reason)
        await provision.scale_workers(
            self.scaler,
            body,
            target,
            reason=message,
            resource_version=fence.resource_version(deployment),
        )
        self.events(body, "Normal", reason, message)
        log.info("%s/%s %s %s", namespace, name, reason, message)
        self.metrics.scaled(namespace, name, replicas, target)
        self.memory.last_scale_time = status_mod.iso(now)
        self.memory.last_scale_reason = f"{reason} {message}"[:256]
        outcome.replicas_after = target

    def _reconcile_conflicts(self, body: Mapping[str, Any], name: str) -> tuple[str, ...]:
        """The reconcile's conflicts, but the worker Deployment's: the tick sees it live."""
        worker_key = f"Deployment/{naming.worker_name(name)}"
        return tuple(key for key in self.conflicts(body) if key != worker_key)

    async def _read_stats(
        self, namespace: str, name: str, spec: TaskQueueSpec, now: float, drained: dict[str, int]
    ) -> BrokerStats | BrokerUnreachable:
        try:
            url = await self._broker_url(namespace, name, spec, now)
            tls = await self._tls(namespace, name, spec, url, now)
            return await self.reader.read(
                f"{namespace}/{name}",
                url,
                spec.broker_queues(drained),
                stats_timeout(spec.scaling.poll_seconds),
                prefix=spec.broker.key_prefix,
                tls=tls,
            )
        except BrokerUnreachable as error:
            return error

    def _remember_status(self, body: Mapping[str, Any]) -> None:
        """On the first tick after a (re)start, pick up what the last operator persisted."""
        memory = self.memory
        if memory.written is not None:
            return
        status = body.get("status") or {}
        if memory.policy_state is None:
            try:
                memory.policy_state = (
                    PolicyState.from_dict(status.get("policyState")) or PolicyState()
                )
            except Exception:
                log.warning("ignoring an unreadable status.policyState")
                memory.policy_state = PolicyState()
        memory.last_scale_time = memory.last_scale_time or status.get("lastScaleTime")
        memory.last_scale_reason = memory.last_scale_reason or status.get("lastScaleReason")
        memory.startup.resume(startup.restored(status.get("podStartupSeconds")))

    async def _tls(
        self, namespace: str, name: str, spec: TaskQueueSpec, url: str, now: float
    ) -> BrokerTLS:
        """`_broker_tls`, read again every `refresh_seconds` (a renewed CA) or when the
        URL switches to or from TLS."""
        memory = self.memory
        wanted = is_tls_url(url)
        stale = now - memory.tls_read_at >= self.refresh_seconds
        if memory.tls is None or memory.tls_for != wanted or stale:
            memory.tls = await self._broker_tls(namespace, name, spec, url)
            memory.tls_for, memory.tls_read_at = wanted, now
        return memory.tls

    async def _secret_value(self, namespace: str, secret: str, key: str, why: str) -> str:
        try:
            value = await self._lane.read_secret_value(namespace, secret, key)
        except Exception as error:
            raise BrokerUnreachable(
                f"cannot read Secret {secret}: {type(error).__name__}"
            ) from error
        if not value:
            raise BrokerUnreachable(f"Secret {secret} (key {key!r}) not found or empty: {why}")
        return value

    async def _broker_tls(
        self, namespace: str, name: str, spec: TaskQueueSpec, url: str
    ) -> BrokerTLS:
        """The CA that verifies a rediss:// or amqps:// broker (and an external broker's
        client certificate), read from their Secrets as the workers mount them."""
        if not is_tls_url(url):
            return BrokerTLS()
        ca_pem = cert_pem = key_pem = None
        ca = spec.broker.ca_secret(name)
        if ca is not None:
            why = "the CA that verifies the broker's certificate"
            ca_pem = await self._secret_value(namespace, ca.name, ca.key, why)
        client = spec.broker.tls.client_cert_secret if spec.broker.managed is None else None
        if client is not None:
            why = "the client certificate for the broker"
            cert_pem = await self._secret_value(namespace, client, naming.TLS_CERT_KEY, why)
            key_pem = await self._secret_value(namespace, client, naming.TLS_KEY_KEY, why)
        return self.tls_files.broker_tls(ca_pem, cert_pem, key_pem)

    async def _refresh_credentials(
        self, body: Mapping[str, Any], spec: TaskQueueSpec, now: float
    ) -> None:
        """Every `refresh_seconds`: the managed broker's Secrets (credentials.sync: a
        missing role Secret is generated again, an edited password re-derives its URL and
        the broker's users file), the new credentials set on the live broker (once per
        change; retried until the broker takes them), and the operator's own URL."""
        memory = self.memory
        if memory.url is not None and now - memory.url_read_at < self.refresh_seconds:
            return
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        try:
            synced = await credentials.sync(self._lane, body, spec)
        except Exception:
            log.warning("credentials of %s/%s", namespace, name, exc_info=True)
            self.metrics.error(namespace, name, "credentials")
            return
        if not synced.complete:
            return  # a foreign Secret in the way: the reconcile reports the conflict
        memory.credentials_version = synced.version()
        if synced.rotated:
            roles = ", ".join(synced.rotated)
            self.events(body, "Normal", "CredentialsRotated", f"new password for: {roles}")
        fingerprint = synced.fingerprint()
        if fingerprint != memory.applied and synced.admin_url:
            try:
                tls = await self._tls(namespace, name, spec, synced.admin_url, now)
                await asyncio.to_thread(
                    broker_admin.apply,
                    spec.broker.type,
                    synced.admin_url,
                    synced.roles,
                    spec.broker.key_prefix,
                    name,
                    spec.broker_queues(),
                    tls,
                )
                memory.applied = fingerprint
            except Exception as error:  # unreachable or still starting: retried next time
                log.info("broker users of %s/%s not applied yet: %s", namespace, name, error)
        url = synced.urls.get("operator")
        if url:
            ref = spec.broker.url_secret(name, "operator")
            memory.url, memory.url_read_at, memory.url_ref = url, now, (ref.name, ref.key)

    async def _broker_url(self, namespace: str, name: str, spec: TaskQueueSpec, now: float) -> str:
        memory = self.memory
        ref = spec.broker.url_secret(name, "operator")
        secret, key = ref.name, ref.key
        fresh = now - memory.url_read_at < self.refresh_seconds
        if memory.url is not None and fresh and memory.url_ref == (secret, key):
            return memory.url  # a switch to another Secret (managed -> external) re-reads
        try:
            url = await self._lane.read_secret_value(namespace, secret, key)
        except Exception as error:
            raise BrokerUnreachable(
                f"cannot read Secret {secret}: {type(error).__name__}"
            ) from error
        if not url:
            raise BrokerUnreachable(f"Secret {secret} (key {key!r}) not found or empty")
        # A changed URL: the reader moves this TaskQueue to it (and closes an unused one).
        memory.url, memory.url_read_at, memory.url_ref = url, now, (secret, key)
        return url

    async def _worker_deployment(
        self, body: Mapping[str, Any], namespace: str, name: str, spec: TaskQueueSpec
    ) -> dict[str, Any] | None:
        """The live Deployment; provision recreates it if missing and repairs drift. The
        drift check (a deep comparison of pod templates) runs again only when the
        Deployment or the wanted template changed since it last passed: at 1,000
        TaskQueues it was the biggest share of the operator's CPU."""
        template = self._desired_template(body, name, spec)
        try:
            live = await self._lane.read_deployment(namespace, naming.worker_name(name))
            key = _sync_key(body, live, self._template_stamp(template))
            if key is not None and self.memory.synced == key:
                return live
            replicas = spec.scaling.min_replicas
            if self.memory.policy_state is not None and self.memory.written:
                # Recreated after a deletion: at what the policy last wanted, not minReplicas.
                replicas = int(self.memory.written.get("desiredReplicas") or replicas)
            live = await provision.sync_worker_deployment(
                self._lane,
                body,
                spec,
                replicas=replicas,
                template=template,
                events=self.events,
                credentials=self._credentials(spec),
            )
            self.memory.worker_conflict = None
            # After a repair, `live` is the Deployment as it was: the patched one comes
            # with a new resourceVersion, and is checked again.
            self.memory.synced = _sync_key(body, live, self._template_stamp(template))
            return live
        except provision.NameConflict as conflict:
            if self.memory.worker_conflict != conflict.key:
                message = status_mod.conflict_message((conflict.key,))
                self.events(body, "Warning", "NameConflict", message)
                log.warning("%s/%s: %s", namespace, name, message)
            self.memory.worker_conflict = conflict.key
            return None
        except Exception:
            log.exception("worker Deployment of %s/%s", namespace, name)
            self.metrics.error(namespace, name, "deployment")
            return None

    def _credentials(self, spec: TaskQueueSpec) -> str | None:
        return self.memory.credentials_version if spec.broker.managed is not None else None

    def _desired_template(
        self, body: Mapping[str, Any], name: str, spec: TaskQueueSpec
    ) -> dict[str, Any] | None:
        """Built once per spec generation and worker credential: the drift check runs
        every poll. None while a managed broker's worker credential is unknown (its
        Secrets unreadable so far): a template without it would roll every pod."""
        generation = body["metadata"].get("generation")
        version = self._credentials(spec)
        if spec.broker.managed is not None and version is None:
            return None
        drain = shards.drain_extra(spec, shards.drained(body.get("status"), spec))
        key = (generation, version, tuple(sorted(drain.items())))
        cached = self.memory.template
        if cached is None or cached[0] != key or generation is None:
            cached = self.memory.template = (
                key,
                worker.worker_pod_template(name, spec, version, drain),
            )
        return cached[1]

    def _template_stamp(self, template: Mapping[str, Any] | None) -> Any:
        """The key `template` was built under (generation, credential, drained shards);
        None when there is no wanted template this poll."""
        cached = self.memory.template
        return cached[0] if template is not None and cached is not None else None

    async def _worker_problem(
        self, namespace: str, name: str, deployment: Mapping[str, Any] | None, ready: int
    ) -> pod_health.PodProblem | None:
        """Why worker pods are stuck, read from the pods only while some are not ready;
        the same list (and one more when the ready count rises) measures pod start-up."""
        looking = pod_health.should_look(deployment)
        if not looking and not startup.worth_listing(ready, self.memory.last_ready):
            return None
        try:
            pods = await self._lane.list_pods(namespace, naming.worker_selector(name))
        except Exception:
            log.warning("could not list the worker pods of %s/%s", namespace, name, exc_info=True)
            self.metrics.error(namespace, name, "pods")
            return None
        self.memory.startup.observe(pods)
        return pod_health.worker_problem(pods) if looking else None

    async def _set_deletion_costs(self, namespace: str, name: str, stats: BrokerStats) -> None:
        """Idle pods cheapest, so the ReplicaSet removes them first."""
        prefix = naming.worker_name(name) + "-"
        ours = [w for w in stats.workers if w.pod and w.pod.startswith(prefix)]
        wanted = drain.deletion_costs(ours)
        changes = drain.changed_costs(wanted, self.memory.costs)

        async def annotate(pod: str, cost: int) -> None:
            try:
                if await self._lane.annotate_pod(
                    namespace, pod, {naming.DELETION_COST_ANNOTATION: str(cost)}
                ):
                    self.memory.costs[pod] = cost
            except Exception:
                log.warning("could not annotate pod %s/%s", namespace, pod, exc_info=True)
                self.metrics.error(namespace, name, "deletion-cost")

        await asyncio.gather(*(annotate(pod, cost) for pod, cost in changes.items()))
        live = set(wanted)
        self.memory.costs = {pod: cost for pod, cost in self.memory.costs.items() if pod in live}

    def _status(
        self,
        body: Mapping[str, Any],
        spec: TaskQueueSpec,
        health: status_mod.Health,
        obs: Observation | None,
        decision: Decision | None,
        replicas: int,
        ready: int,
        now: float,
    ) -> dict[str, Any]:
        memory = self.memory
        previous_conditions = (memory.written or body.get("status") or {}).get("conditions")
        new: dict[str, Any] = {"observedGeneration": body["metadata"].get("generation")}
        new.update(status_mod.figures(obs, decision, replicas, ready))
        new["broker"] = status_mod.broker_secrets(body["metadata"]["name"], spec)
        if obs is None and memory.written:
            # Unreachable broker: keep the last figures rather than invent zeros.
            for key in (
                "backlog",
                "inFlight",
                "oldestAgeSeconds",
                "oldestAge",
                "arrivalRate",
                "serviceRate",
            ):
                if key in memory.written:
                    new[key] = memory.written[key]
        new["conditions"] = status_mod.merge_conditions(
            previous_conditions, status_mod.conditions(health, replicas, ready), status_mod.iso(now)
        )
        if memory.last_scale_time:
            new["lastScaleTime"] = memory.last_scale_time
            new["lastScaleReason"] = memory.last_scale_reason
        if memory.policy_state is not None:
            new["policyState"] = memory.policy_state.to_dict()
        if memory.startup.seconds is not None:
            new["podStartupSeconds"] = round(memory.startup.seconds, 1)
        sharded_status = shards.status_field(memory.shards)
        if sharded_status or "shards" in (memory.written or body.get("status") or {}):
            new["shards"] = sharded_status or None  # None: the merge patch removes it
        return new

    def _invalid_status(self, body: Mapping[str, Any], error: str, now: float) -> dict[str, Any]:
        previous = (self.memory.written or body.get("status") or {}).get("conditions")
        conditions = status_mod.conditions(status_mod.Health(spec_error=error), 0, 0)
        return {
            "observedGeneration": body["metadata"].get("generation"),
            "conditions": status_mod.merge_conditions(previous, conditions, status_mod.iso(now)),
        }

    async def _write_status(self, body: Mapping[str, Any], now: float, new: dict[str, Any]) -> bool:
        """Write `new` (with this write's `status.writer` token) if the stored status is
        still the one this memory stands on (fence.py); on a 409, adopt what is stored."""
        memory = self.memory
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        if not status_mod.needs_write(memory.written, new, now, memory.written_at):
            return False
        if self.budget is not None and not self.budget.allow(
            memory.written, new, now, memory.written_at
        ):
            return False  # figures only: a later poll writes them (write_budget.py)
        lane = self._lane

        async def fenced(status: dict[str, Any]) -> bool:
            """The write, carrying the version our memory stands on (fence.py), taken
            when it runs: behind the tick, after the previous write has returned. False
            on a 409 (the stored status adopted instead)."""
            token = self.fence.next_token()
            try:
                version = await lane.patch_status(
                    namespace,
                    name,
                    {**status, fence.WRITER_KEY: token},
                    resource_version=self.fence.precondition(body),
                )
            except Conflict:
                await self._after_status_conflict(namespace, name)
                return False
            self.fence.wrote(token, version)
            return True

        if self.write_slots is not None:
            # Written behind the tick; taken as written, unless the write fails (then the
            # next poll writes again) or meets a 409 (then the stored status is adopted).
            memory.written, memory.written_at = new, now
            self._status_writer(namespace, name).submit(fenced, new)
            return True
        try:
            if not await fenced(new):
                return False
        except Exception:
            log.warning("status write for %s/%s failed", namespace, name, exc_info=True)
            self.metrics.error(namespace, name, "status")
            return False
        memory.written, memory.written_at = new, now
        return True

    def _status_writer(self, namespace: str, name: str) -> StatusWriter:
        if self.behind is None:
            assert self.write_slots is not None

            def failed(status: dict[str, Any]) -> None:
                self.metrics.error(namespace, name, "status")
                if self.memory.written is status:
                    self.memory.written_at = None  # not superseded: write it again

            self.behind = StatusWriter(self.write_slots, failed)
        return self.behind

    async def flush(self) -> None:
        """Until the status handed to the writer is written (tests, the daemon's exit)."""
        if self.behind is not None:
            await self.behind.flush()

    async def _after_status_conflict(self, namespace: str, name: str) -> None:
        """The TaskQueue changed since our memory's version. Re-read it: when another
        operator wrote the status, its scaling state replaces ours (the next tick decides
        from it); when only metadata or the spec changed, the next write carries the new
        version. This tick's status is dropped either way, never forced through."""
        self.metrics.error(namespace, name, "status-conflict")
        try:
            stored = await self.cluster.read_taskqueue(namespace, name)
        except Exception:
            log.warning("re-reading %s/%s after a 409 failed", namespace, name, exc_info=True)
            return
        if stored is None:
            return
        if self.fence.foreign(stored):
            log.warning(
                "status of %s/%s was written by %s since: adopting its scaling state",
                namespace,
                name,
                fence.writer_pod(fence.written_by(stored)) or "another writer",
            )
            memory = self.memory
            memory.written = memory.written_at = None
            memory.policy_state = None
            memory.last_scale_time = memory.last_scale_reason = None
            memory.startup = startup.StartupEstimate()
            self._remember_status(stored)
        self.fence.adopt(stored)


def _sync_key(
    body: Mapping[str, Any], live: Mapping[str, Any] | None, stamp: Any
) -> tuple[Any, ...] | None:
    """What the drift check's verdict depends on: the TaskQueue (uid: controlled_by), the
    stored Deployment (the cache keeps its resourceVersion across our own scale writes,
    which never touch the template), and `stamp`, what the wanted template was built from
    (`_template_stamp`). None (check every time) without a generation to tell."""
    generation = body["metadata"].get("generation")
    if live is None or generation is None:
        return None
    meta = live.get("metadata") or {}
    return (body["metadata"].get("uid"), meta.get("resourceVersion"), generation, stamp)


def deployment_name(body: Mapping[str, Any]) -> str:
    return naming.worker_name(body["metadata"]["name"])


def _with_local_time(obs: Observation, now: float) -> Observation:
    """The policy's clock is the operator's wall clock (persisted state outlives brokers)."""
    return replace(obs, now=now)


WAKE_MIN_GAP_SECONDS = 0.25  # a woken tick starts at least this long after the last one


async def sleep_or_wake(
    sleep: Callable[[float], Awaitable[Any]], seconds: float, wake: asyncio.Event | None
) -> bool:
    """Sleep `seconds`, or less if `wake` is set first; True when woken."""
    if wake is None:
        await sleep(seconds)
        return False
    if wake.is_set():
        return True
    sleeper = asyncio.ensure_future(sleep(seconds))
    waiter = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        waiter.cancel()
    return wake.is_set()


async def run_periodically(
    step: Callable[[], Awaitable[Any]],
    interval: Callable[[], float],
    sleep: Callable[[float], Awaitable[Any]],
    stopped: Callable[[], bool],
    lateness: Callable[[float], None] = lambda _s: None,
    clock: Callable[[], float] | None = None,
    initial_delay: float = 0.0,
    skipped: Callable[[int], None] = lambda _n: None,
    wake: asyncio.Event | None = None,
    woken: Callable[[], None] = lambda: None,
) -> None:
    """Call `step` on a fixed schedule (not 'interval after the previous step ended'), so
    slow steps do not drift the cadence; missed slots are skipped, never bunched.
    `initial_delay` spreads many loops over the interval instead of a herd every poll.
    `skipped` hears how many slots an overrunning step cost.

    Setting `wake` runs an extra step as soon as possible (at least WAKE_MIN_GAP_SECONDS
    after the previous one started), then the schedule carries on unchanged: push
    activation on top of polling. `woken` hears each such step."""
    clock = clock or asyncio.get_running_loop().time
    due = clock() + initial_delay
    if initial_delay > 0:
        if await sleep_or_wake(sleep, initial_delay, wake):  # a wake-up starts it early
            woken()
    while not stopped():
        lateness(max(0.0, clock() - due))
        if wake is not None:
            wake.clear()
        last = clock()
        await step()
        period = interval()
        due += period
        now = clock()
        if due < now:
            # The step overran whole slots: count them (lateness alone would read 0 for
            # the next tick and hide them), then restart the cadence from now.
            skipped(int((now - due) // period) + 1 if period > 0 else 1)
            due = now
        while True:
            delay = due - clock()
            if delay <= 0 or not await sleep_or_wake(sleep, delay, wake):
                break  # the slot has come
            gap = last + WAKE_MIN_GAP_SECONDS - clock()
            if gap > 0:
                await sleep(gap)
            if stopped():
                return
            woken()
            assert wake is not None
            wake.clear()
            last = clock()
            await step()
