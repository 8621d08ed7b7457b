"""The operator's only door to the Kubernetes API (besides kopf's own watch).

Synchronous `kubernetes` client calls run in a dedicated thread pool so the event loop
never blocks. Everything is plain dicts in and out. 404s become None/False, 409s on
create mean "already there", so callers stay simple and idempotent. `KubeCluster` is the
real implementation of cluster.Cluster.

Writes that act on a decision carry the resourceVersion it was made from, as
`metadata.resourceVersion` inside the JSON merge patch: the API server takes it as a
precondition and answers 409 (raised as cluster.Conflict) when the object has moved on,
so a stale writer (an operator replica that has not noticed it lost the lead) is refused
instead of silently overwriting the fresh value. Server-side apply would not do that here:
every replica applies as the same field manager, and one manager never conflicts with
itself.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from ebbtide_operator import naming
from ebbtide_operator.cluster import Conflict
from ebbtide_operator.deployment_cache import DeploymentCache

log = logging.getLogger(__name__)
MERGE = "application/merge-patch+json"
JSON = "application/json"  # the client sends no Content-Type on POST unless told
TIMEOUT = (5.0, 15.0)  # connect, read seconds


SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def operator_namespace(path: str = SERVICE_ACCOUNT_NAMESPACE) -> str | None:
    """Where the operator runs, which managed brokers' NetworkPolicies admit:
    EBBTIDE_OPERATOR_NAMESPACE (the chart sets it from the downward API), POD_NAMESPACE,
    then the in-cluster ServiceAccount's namespace file; None outside a cluster."""
    for variable in ("EBBTIDE_OPERATOR_NAMESPACE", "POD_NAMESPACE"):
        value = os.environ.get(variable, "").strip()
        if value:
            return value
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def load_config() -> None:
    """In-cluster credentials when running in a pod, else the kubeconfig."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()


class KubeCluster:
    """cluster.Cluster on the real API server: async over the typed clients, one shared
    connection pool."""

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient | None = None,
        threads: int = 16,
        deployments: DeploymentCache | None = None,
    ):
        if api_client is None:
            configuration = kubernetes.client.Configuration.get_default_copy()
            configuration.connection_pool_maxsize = threads
            api_client = kubernetes.client.ApiClient(configuration)
        self.api_client = api_client
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.apps = kubernetes.client.AppsV1Api(api_client)
        self.networking = kubernetes.client.NetworkingV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            threads, thread_name_prefix="ebbtide-kube"
        )
        self.deployments = deployments

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one API call in the pool; returns the response as plain JSON. Responses are
        never turned into client models (faster, and unknown fields cannot break us)."""
        kwargs.setdefault("_request_timeout", TIMEOUT)
        kwargs["_preload_content"] = False
        loop = asyncio.get_running_loop()

        def call() -> Any:
            data = fn(*args, **kwargs).data  # reading it releases the pooled connection
            return json.loads(data) if data else None

        return await loop.run_in_executor(self._pool, call)

    async def _read(self, fn: Callable[..., Any], *args: Any) -> dict[str, Any] | None:
        try:
            return await self._call(fn, *args)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    async def _write(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A merge patch; a 409 becomes Conflict (the precondition failed)."""
        try:
            return await self._call(fn, *args, _content_type=MERGE)
        except ApiException as error:
            if error.status == 409:
                raise Conflict(f"{error.reason}: {_message(error)}") from error
            raise

    def _certificates(self) -> tuple[Callable, Callable, Callable, Callable]:
        """cert-manager Certificates (spec.broker.tls.issuerRef), with the typed APIs'
        argument order: (namespace, body), (name, namespace), (name, namespace, patch)."""
        custom, where = self.custom, (naming.CERT_MANAGER_GROUP, "v1")

        def create(namespace: str, body: Any, **kw: Any) -> Any:
            return custom.create_namespaced_custom_object(
                *where, namespace, "certificates", body, **kw
            )

        def read(name: str, namespace: str, **kw: Any) -> Any:
            return custom.get_namespaced_custom_object(
                *where, namespace, "certificates", name, **kw
            )

        def patch(name: str, namespace: str, body: Any, **kw: Any) -> Any:
            return custom.patch_namespaced_custom_object(
                *where, namespace, "certificates", name, body, **kw
            )

        def delete(name: str, namespace: str, **kw: Any) -> Any:
            return custom.delete_namespaced_custom_object(
                *where, namespace, "certificates", name, **kw
            )

        return create, read, patch, delete

    def _api_for(self, kind: str) -> tuple[Callable, Callable, Callable, Callable]:
        """(create, read, patch, delete) for the kinds the operator owns."""
        if kind == "Certificate":
            return self._certificates()
        table = {
            "Secret": (self.core, "secret"),
            "Service": (self.core, "service"),
            "ConfigMap": (self.core, "config_map"),
            "Deployment": (self.apps, "deployment"),
            "StatefulSet": (self.apps, "stateful_set"),
            "NetworkPolicy": (self.networking, "network_policy"),
        }
        api, suffix = table[kind]
        return tuple(
            getattr(api, f"{verb}_namespaced_{suffix}")
            for verb in ("create", "read", "patch", "delete")
        )

    # --- generic objects -------------------------------------------------------------

    async def create(self, obj: Mapping[str, Any]) -> bool:
        """Create; False when it already exists."""
        create, *_ = self._api_for(obj["kind"])
        try:
            await self._call(create, obj["metadata"]["namespace"], obj, _content_type=JSON)
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    async def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        _, read, *_ = self._api_for(kind)
        try:
            return await self._read(read, name, namespace)
        except ApiException as error:
            # Without the chart's rbac.certManager the operator may not read Certificates,
            # so it cannot have made one either: none of ours exists.
            if kind == "Certificate" and error.status == 403:
                return None
            raise

    async def patch(self, kind: str, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        *_, patch_fn, _ = self._api_for(kind)
        await self._call(patch_fn, name, namespace, patch, _content_type=MERGE)

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        *_, delete = self._api_for(kind)
        try:
            await self._call(delete, name, namespace, propagation_policy="Background")
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    # --- what the tick needs ---------------------------------------------------------

    async def read_secret_value(self, namespace: str, name: str, key: str) -> str | None:
        secret = await self.read("Secret", namespace, name)
        if secret is None:
            return None
        value = (secret.get("data") or {}).get(key)
        if value is None:
            return (secret.get("stringData") or {}).get(key)
        return base64.b64decode(value).decode()

    async def read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        """From the watch cache when there is one; a GET only for a Deployment not seen yet."""
        if self.deployments is not None:
            cached = self.deployments.get(namespace, name)
            if cached is not None:
                return cached
        live = await self.read("Deployment", namespace, name)
        if self.deployments is not None and _watched(live):
            self.deployments.remember(live)
        return live

    async def scale_deployment(
        self, namespace: str, name: str, replicas: int, resource_version: str | None = None
    ) -> str | None:
        """Writes only `spec.replicas`, through the scale subresource (which takes the
        Scale's resourceVersion as the Deployment's precondition)."""
        scale = await self._write(
            self.apps.patch_namespaced_deployment_scale,
            name,
            namespace,
            with_precondition({"spec": {"replicas": replicas}}, resource_version),
        )
        written = resource_version_of(scale)
        if self.deployments is not None:
            self.deployments.scaled(namespace, name, replicas, written)
        return written

    async def list_pods(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        """`resourceVersion=0`: served from the API server's watch cache, not etcd."""
        found = await self._call(
            self.core.list_namespaced_pod,
            namespace,
            label_selector=",".join(f"{key}={value}" for key, value in selector.items()),
            resource_version="0",
        )
        return list((found or {}).get("items") or [])

    async def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str]) -> bool:
        """False when the pod is already gone."""
        try:
            await self._call(
                self.core.patch_namespaced_pod,
                name,
                namespace,
                {"metadata": {"annotations": dict(annotations)}},
                _content_type=MERGE,
            )
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    async def patch_status(
        self,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> str | None:
        stored = await self._write(
            self.custom.patch_namespaced_custom_object_status,
            naming.GROUP,
            naming.VERSION,
            namespace,
            naming.PLURAL,
            name,
            with_precondition({"status": dict(status)}, resource_version),
        )
        return resource_version_of(stored)

    async def read_taskqueue(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._read(
            self.custom.get_namespaced_custom_object,
            naming.GROUP,
            naming.VERSION,
            namespace,
            naming.PLURAL,
            name,
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.api_client.close()


def with_precondition(patch: dict[str, Any], resource_version: str | None) -> dict[str, Any]:
    """The merge patch, refused by the API server unless the object is still at
    `resource_version` (None: unconditional)."""
    if resource_version is None:
        return patch
    return {**patch, "metadata": {**patch.get("metadata", {}), "resourceVersion": resource_version}}


def resource_version_of(obj: Mapping[str, Any] | None) -> str | None:
    return ((obj or {}).get("metadata") or {}).get("resourceVersion")


def _message(error: ApiException) -> str:
    """The API server's own sentence from a Status body, else the raw body, short."""
    try:
        return str(json.loads(error.body or "{}").get("message", ""))[:300]
    except (ValueError, AttributeError):
        return str(error.body)[:300]


def _watched(deployment: Mapping[str, Any] | None) -> bool:
    """Cache only what the watch keeps fresh: a foreign same-named Deployment (no such
    labels) would otherwise stay cached after its owner deletes it."""
    labels = ((deployment or {}).get("metadata") or {}).get("labels") or {}
    return deployment is not None and naming.WORKER_WATCH_LABELS.items() <= labels.items()
