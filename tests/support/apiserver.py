"""A real etcd + kube-apiserver for the operator's integration tests, and the operator's
own `KubeCluster` bound to it.

`control_plane(root)` starts the pair once (e2e/controlplane.py with no
controller-manager and no node: the binaries `make binaries` builds), installs the
TaskQueue CRD from the chart and yields an `ApiServer`. Without a controller-manager no
ReplicaSet, pod or Deployment status is ever made for us, so a test that needs pods, or
a Deployment's ready count, writes them itself through the API (`create_pod`,
`set_deployment_status`, the status subresources), as the kubelet and the Deployment
controller would. Everything else the operator reads and writes goes through the real API
server: validation, merge patches, the scale and status subresources, the CRD's status
schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import yaml
from ebbtide_operator import naming
from ebbtide_operator.deployment_cache import DeploymentCache
from ebbtide_operator.kube import KubeCluster
from kubernetes.client.exceptions import ApiException

from e2e import processes
from e2e.controlplane import CACHE, ControlPlane

ROOT = Path(__file__).parents[2]
CRD = ROOT / "charts" / "ebbtide" / "files" / "taskqueue.yaml"
READY_TIMEOUT = 30.0
_namespaces = itertools.count(1)


@dataclass(frozen=True)
class ApiServer:
    """The running API server: its admin kubeconfig, and clients made from it."""

    kubeconfig: Path

    def api_client(self, pool: int = 16) -> kubernetes.client.ApiClient:
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(
            config_file=str(self.kubeconfig), client_configuration=configuration
        )
        configuration.connection_pool_maxsize = pool
        return kubernetes.client.ApiClient(configuration)


def binaries_built() -> bool:
    """Whether `make binaries` has run: the stamp e2e/build-binaries.sh leaves in its bin
    dir (named from e2e/versions.env, as the script names it). Checked first so that a
    test session never starts a ten-minute Go build under pytest's timeout."""
    pins = dict(
        line.split("=", 1)
        for line in (ROOT / "e2e" / "versions.env").read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    )
    name = "k8s-v{KUBERNETES_VERSION}-etcd-v{ETCD_VERSION}-helm-v{HELM_VERSION}".format(**pins)
    return (CACHE / name / "bin" / ".complete").is_file()


@contextlib.contextmanager
def control_plane(root: Path) -> Iterator[ApiServer]:
    """etcd + kube-apiserver under `root`, with the TaskQueue CRD established."""
    plane = ControlPlane(root, attached=True, controller_manager=False)
    plane.up()
    try:
        server = ApiServer(plane.kubeconfig)
        with contextlib.closing(server.api_client(pool=2)) as client:
            install_crd(client)
        yield server
    finally:
        plane.down()


def install_crd(client: kubernetes.client.ApiClient) -> None:
    """The chart's CRD, waited on until the API server serves TaskQueues."""
    api = kubernetes.client.ApiextensionsV1Api(client)
    body = yaml.safe_load(CRD.read_text())
    api.create_custom_resource_definition(body)
    custom = kubernetes.client.CustomObjectsApi(client)

    def served() -> bool:
        try:
            custom.list_cluster_custom_object(naming.GROUP, naming.VERSION, naming.PLURAL)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    if not processes.wait_until(served, READY_TIMEOUT, interval=0.1):
        raise AssertionError(f"the TaskQueue CRD was not served within {READY_TIMEOUT:.0f}s")


class RecordingCluster(KubeCluster):
    """The operator's real `KubeCluster`, also counting what the operator wrote, so a test
    can assert what it *did* (every call still goes to the API server)."""

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        deployments: DeploymentCache | None = None,
    ) -> None:
        super().__init__(api_client, deployments=deployments)
        self.patches: list[tuple[str, str, str, dict[str, Any]]] = []
        self.scales: list[tuple[str, str, int]] = []
        self.status_writes = 0
        self.pod_lists = 0
        self.events: list[tuple[str, str, str]] = []

    async def patch(self, kind: str, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        await super().patch(kind, namespace, name, patch)
        self.patches.append((kind, namespace, name, dict(patch)))

    async def scale_deployment(
        self, namespace: str, name: str, replicas: int, resource_version: str | None = None
    ) -> str | None:
        written = await super().scale_deployment(namespace, name, replicas, resource_version)
        self.scales.append((namespace, name, replicas))
        return written

    async def patch_status(
        self,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> str | None:
        written = await super().patch_status(namespace, name, status, resource_version)
        self.status_writes += 1
        return written

    async def list_pods(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        self.pod_lists += 1
        return await super().list_pods(namespace, selector)

    def record_event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """The EventSink: main.post_event posts these through kopf in the operator."""
        self.events.append((type_, reason, message))


class Namespace:
    """One test's namespace on the API server, with the typed clients to arrange it."""

    def __init__(self, client: kubernetes.client.ApiClient, name: str) -> None:
        self.name = name
        self.core = kubernetes.client.CoreV1Api(client)
        self.apps = kubernetes.client.AppsV1Api(client)
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.core.create_namespace({"metadata": {"name": name}})
        # The ServiceAccount admission plugin refuses pods until "default" exists; the
        # controller-manager would make it.
        self.core.create_namespaced_service_account(name, {"metadata": {"name": "default"}})

    def create_taskqueue(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Stored as the CRD validates and defaults it: the body the operator would see."""
        body = {**body, "metadata": {**body["metadata"], "namespace": self.name}}
        return self.custom.create_namespaced_custom_object(
            naming.GROUP, naming.VERSION, self.name, naming.PLURAL, body
        )

    def taskqueue(self, name: str) -> dict[str, Any]:
        """The TaskQueue as stored: the body kopf would hand the next tick."""
        return self.custom.get_namespaced_custom_object(
            naming.GROUP, naming.VERSION, self.name, naming.PLURAL, name
        )

    def patch_spec(self, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Merge `spec` into the stored TaskQueue's spec (as `kubectl apply` would: a new
        generation); returns the stored object."""
        return self.custom.patch_namespaced_custom_object(
            naming.GROUP, naming.VERSION, self.name, naming.PLURAL, name, {"spec": spec}
        )

    def status(self, name: str) -> dict[str, Any]:
        """The TaskQueue's status as stored."""
        stored = self.custom.get_namespaced_custom_object(
            naming.GROUP, naming.VERSION, self.name, naming.PLURAL, name
        )
        return stored.get("status") or {}

    def add_secret(self, name: str, data: Mapping[str, str]) -> None:
        self.core.create_namespaced_secret(
            self.name, {"metadata": {"name": name}, "stringData": dict(data)}
        )

    def deployment(self, name: str) -> dict[str, Any] | None:
        try:
            found = self.apps.read_namespaced_deployment(name, self.name, _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return json.loads(found.data)

    def set_deployment_status(self, name: str, ready: int, updated: int | None = None) -> None:
        """What the Deployment controller would report: `ready` of spec.replicas ready."""
        replicas = self.deployment(name)["spec"]["replicas"]
        status = {"replicas": replicas, "readyReplicas": ready, "availableReplicas": ready}
        status["updatedReplicas"] = replicas if updated is None else updated
        self.apps.patch_namespaced_deployment_status(
            name, self.name, {"status": status}, _content_type="application/merge-patch+json"
        )

    def create_pod(
        self, name: str, labels: Mapping[str, str], status: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """A pod as the kubelet would report it (`status` written through the status
        subresource; nothing ever runs it)."""
        pod = self.core.create_namespaced_pod(
            self.name,
            {
                "metadata": {"name": name, "labels": dict(labels)},
                "spec": {"containers": [{"name": "worker", "image": "w:1"}]},
            },
            _preload_content=False,
        )
        if status:
            pod = self.core.patch_namespaced_pod_status(
                name,
                self.name,
                {"status": dict(status)},
                _content_type="application/merge-patch+json",
                _preload_content=False,
            )
        return json.loads(pod.data)

    def pod_annotations(self, name: str) -> dict[str, str]:
        pod = self.core.read_namespaced_pod(name, self.name, _preload_content=False)
        return json.loads(pod.data)["metadata"].get("annotations") or {}


def new_namespace(client: kubernetes.client.ApiClient, prefix: str = "t") -> Namespace:
    return Namespace(client, f"{prefix}-{next(_namespaces)}")


def worker_labels(taskqueue: str) -> dict[str, str]:
    return dict(naming.worker_selector(taskqueue))


@contextlib.asynccontextmanager
async def watched_deployments(
    client: kubernetes.client.ApiClient, namespace: str, cache: DeploymentCache
):
    """Feed `cache` from a watch of the worker Deployments in `namespace`, as the
    operator's kopf handler (main.watch_worker_deployment) does; the events are applied on
    the event loop, in order."""
    loop = asyncio.get_running_loop()
    apps = kubernetes.client.AppsV1Api(client)
    selector = ",".join(f"{k}={v}" for k, v in naming.WORKER_WATCH_LABELS.items())
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            watch = kubernetes.watch.Watch()
            for event in watch.stream(
                apps.list_namespaced_deployment,
                namespace,
                label_selector=selector,
                timeout_seconds=2,  # so that `stop` is seen within 2 s
            ):
                if event["type"] != "ERROR":  # e.g. 410 Gone: the next round lists afresh
                    loop.call_soon_threadsafe(cache.apply, event["type"], event["raw_object"])
                if stop.is_set():
                    watch.stop()

    thread = threading.Thread(target=run, name="deployment-watch", daemon=True)
    thread.start()
    try:
        yield cache
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 10)
