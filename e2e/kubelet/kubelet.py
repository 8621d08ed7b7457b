"""The kubelet itself: threads, the reconcile loop, the API writes.

Threads: two pod reflectors (pods bound to this node; unscheduled pods, for binding), the
node heartbeat, and the prober. The reconcile loop runs on the main thread (processes must
be forked from a thread that lives as long as the kubelet, see process.py); it wakes on
every watch event, process exit and probe verdict, and at least every 0.25 s, so a new pod
runs, and a deleted pod's processes get SIGTERM, well within a second.

Per pass it binds unscheduled pods (there is no kube-scheduler, see scheduler.py), syncs
every pod on the node (pods.py), writes each pod's status through pods/status when it
changed, and finishes deletions: once a deleted pod's processes have all exited it deletes
the pod with gracePeriodSeconds=0 and a uid precondition, as the kubelet's status manager
does.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.kubelet.api import Api, ApiError
from e2e.kubelet.envresolve import ConfigError
from e2e.kubelet.images import ImageMap
from e2e.kubelet.log import log
from e2e.kubelet.node import NodeAgent, host_capacity, node_labels
from e2e.kubelet.pods import PodRuntime, RuntimeContext
from e2e.kubelet.ports import free_port
from e2e.kubelet.prober import Prober
from e2e.kubelet.process import GroupWatchdog
from e2e.kubelet.reflector import PodReflector
from e2e.kubelet.restarts import Backoff
from e2e.kubelet.scheduler import DEFAULT_SCHEDULER, binding_body, wants_binding

TICK = 0.25
HOST_PORTS_ANNOTATION = "e2e.ebbtide.dev/host-ports"


@dataclass
class Options:
    node_name: str
    state_dir: Path
    image_map: ImageMap = field(default_factory=ImageMap)
    max_pods: int = 110
    backoff: Backoff = field(default_factory=Backoff)
    shutdown_grace: float = 30.0
    keep_node: bool = False
    resync: float = 30.0
    heartbeat: float = 10.0
    schedule: bool = True
    scheduler_names: tuple[str, ...] = (DEFAULT_SCHEDULER,)


class ApiSources:
    """Secrets and ConfigMaps for env resolution, read from the API server."""

    def __init__(self, api: Api) -> None:
        self.api = api

    def _get(self, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
        try:
            return self.api.request(
                "GET", f"/api/v1/namespaces/{namespace}/{kind}/{name}", timeout=10
            )
        except ApiError as error:
            if error.status == 404:
                return None
            raise ConfigError(f"couldn't get {kind[:-1]} {namespace}/{name}: {error}") from error

    def secret(self, namespace: str, name: str) -> Mapping[str, str] | None:
        found = self._get(namespace, "secrets", name)
        if found is None:
            return None
        return {
            key: base64.b64decode(value).decode(errors="replace")
            for key, value in (found.get("data") or {}).items()
        }

    def config_map(self, namespace: str, name: str) -> Mapping[str, str] | None:
        found = self._get(namespace, "configmaps", name)
        return None if found is None else dict(found.get("data") or {})


class Kubelet:
    def __init__(self, api: Api, options: Options) -> None:
        self.api = api
        self.options = options
        self.name = options.node_name
        self.labels = node_labels(self.name)
        self._wake = threading.Event()
        self._stop = threading.Event()  # asked to stop (SIGTERM)
        self._force = threading.Event()  # asked again: kill everything now
        self._threads_stop = threading.Event()
        capacity = host_capacity(options.max_pods, str(options.state_dir))
        self.node = NodeAgent(api, self.name, capacity, options.heartbeat)
        self.scheduled = PodReflector(
            api, f"spec.nodeName={self.name}", self.wake, options.resync, "pods-on-node"
        )
        self.unscheduled = PodReflector(
            api, "spec.nodeName=", self.wake, options.resync, "unscheduled-pods"
        )
        self.prober = Prober(self.wake)
        self.runtimes: dict[str, PodRuntime] = {}
        self._reserved: set[int] = set()
        self._bind_attempts: dict[str, float] = {}
        self._write_errors: dict[str, str] = {}
        self.ctx = RuntimeContext(
            node_name=self.name,
            state_dir=options.state_dir,
            image_map=options.image_map,
            sources=ApiSources(api),
            host_env=dict(os.environ),
            venv_bin=os.path.dirname(sys.executable),
            allocatable=capacity,
            backoff=options.backoff,
            wake=self.wake,
            allocate_port=self._allocate_port,
            release_ports=self._release_ports,
            watchdog=GroupWatchdog(sys.executable),
        )

    # --- plumbing --------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def request_stop(self) -> None:
        """First SIGTERM/SIGINT: stop pods gracefully and leave; a second one hurries."""
        if self._stop.is_set():
            self._force.set()
        self._stop.set()
        self.wake()

    def _allocate_port(self) -> int:
        port = free_port(self._reserved)
        self._reserved.add(port)
        return port

    def _release_ports(self, ports: Iterable[int]) -> None:
        self._reserved.difference_update(ports)

    def _thread(self, target: Any, name: str) -> threading.Thread:
        thread = threading.Thread(target=target, args=(self._threads_stop,), name=name, daemon=True)
        thread.start()
        return thread

    # --- main ------------------------------------------------------------------------

    def run(self) -> int:
        self.node.register()
        log(
            "running",
            node=self.name,
            state_dir=self.options.state_dir,
            scheduling="on" if self.options.schedule else "off",
        )
        self._thread(self.node.heartbeat, "heartbeat")
        self._thread(self.scheduled.run, "watch-node-pods")
        if self.options.schedule:
            self._thread(self.unscheduled.run, "watch-unscheduled-pods")
        self._thread(self.prober.run, "prober")
        while not self._stop.is_set():
            self._wake.wait(TICK)
            self._wake.clear()
            try:
                self.sync_once()
            except Exception as error:  # noqa: BLE001 - keep the node alive; say why
                log("sync pass failed", error=f"{type(error).__name__}: {error}")
        self.shutdown()
        return 0

    def sync_once(self) -> None:
        if self.options.schedule:
            self.schedule(self.unscheduled.snapshot())
        pods = self.scheduled.snapshot()
        for uid, pod in pods.items():
            try:
                runtime = self.runtimes.get(uid)
                if runtime is None:
                    runtime = self.runtimes[uid] = PodRuntime(pod, self.ctx)
                self.sync_pod(runtime, pod)
            except Exception as error:  # noqa: BLE001 - one broken pod must not stop the node
                message = f"{type(error).__name__}: {error}"
                if self._write_errors.get(uid) != message:
                    self._write_errors[uid] = message
                    meta = pod["metadata"]
                    log(
                        "sync failed",
                        f"{meta.get('namespace')}/{meta.get('name')}",
                        error=message,
                        trace=traceback.format_exc(limit=3),
                    )
        if self.scheduled.synced.is_set():
            for uid, runtime in list(self.runtimes.items()):
                if uid in pods:
                    continue
                # Gone from the API (force-deleted, or deleted by us): stop what still runs.
                runtime.sync(None)
                if not runtime.busy:
                    runtime.release()
                    del self.runtimes[uid]
                    self._write_errors.pop(uid, None)
        self.prober.targets = [t for r in self.runtimes.values() for t in r.targets()]

    # --- scheduling ------------------------------------------------------------------

    def schedule(self, pods: Mapping[str, Mapping[str, Any]]) -> None:
        now = time.monotonic()
        for uid in list(self._bind_attempts):
            if uid not in pods:
                del self._bind_attempts[uid]
        for uid, pod in pods.items():
            if not wants_binding(pod, self.labels, self.options.scheduler_names):
                continue
            if now - self._bind_attempts.get(uid, -1e9) < 2.0:
                continue  # just bound: the watch has not caught up yet
            if len(self.runtimes) >= self.options.max_pods:
                continue
            self._bind_attempts[uid] = now
            meta = pod["metadata"]
            try:
                self.api.request(
                    "POST",
                    f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding",
                    body=binding_body(pod, self.name),
                )
                log("bound", pod=f"{meta['namespace']}/{meta['name']}", node=self.name)
            except ApiError as error:
                if error.status not in (404, 409):
                    log("binding failed", pod=f"{meta['namespace']}/{meta['name']}", error=error)

    # --- one pod ---------------------------------------------------------------------

    def sync_pod(self, runtime: PodRuntime, pod: Mapping[str, Any]) -> None:
        if runtime.finished:
            return
        runtime.sync(pod)
        if not runtime.adopted_terminal:
            self.write_status(runtime)
        if pod["metadata"].get("deletionTimestamp") and not runtime.busy:
            self.finish_deletion(runtime)
        elif runtime.ports and not runtime.ports_published:
            self.publish_ports(runtime)

    def _pod_path(self, runtime: PodRuntime) -> str:
        meta = runtime.pod["metadata"]
        return f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"

    def write_status(self, runtime: PodRuntime, timeout: float = 10.0) -> None:
        """PATCH pods/status (strategic merge: others' conditions survive) when it changed;
        the uid in the patch makes it fail on a recreated pod of the same name."""
        status = runtime.status()
        if status == runtime.last_written:
            return
        try:
            self.api.request(
                "PATCH",
                f"{self._pod_path(runtime)}/status",
                body={"metadata": {"uid": runtime.uid}, "status": status},
                content_type="application/strategic-merge-patch+json",
                timeout=timeout,
            )
            runtime.last_written = status
            self._write_errors.pop(runtime.uid, None)
        except ApiError as error:
            if error.status == 404:
                runtime.last_written = status  # gone; the watch will tell
                return
            if self._write_errors.get(runtime.uid) != str(error):
                log("status write failed", pod=runtime.key, error=error)
                self._write_errors[runtime.uid] = str(error)

    def finish_deletion(self, runtime: PodRuntime) -> None:
        """All processes are gone: delete the pod for good (grace 0, uid precondition)."""
        try:
            self.api.request(
                "DELETE",
                self._pod_path(runtime),
                body={
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": runtime.uid},
                },
            )
        except ApiError as error:
            if error.status not in (404, 409):
                log("finishing deletion failed", pod=runtime.key, error=error)
                return
        runtime.finished = True
        log("deleted", pod=runtime.key)

    def publish_ports(self, runtime: PodRuntime) -> None:
        """Annotate the pod with its host ports, so tests and humans can reach it."""
        runtime.ports_published = True
        ports = {str(declared): host for declared, host in sorted((runtime.ports or {}).items())}
        try:
            self.api.request(
                "PATCH",
                self._pod_path(runtime),
                body={
                    "metadata": {
                        "uid": runtime.uid,
                        "annotations": {HOST_PORTS_ANNOTATION: json.dumps(ports)},
                    }
                },
                content_type="application/merge-patch+json",
            )
            log("host ports", pod=runtime.key, ports=json.dumps(ports, separators=(",", ":")))
        except ApiError as error:
            if error.status != 404:
                log("could not annotate host ports", pod=runtime.key, error=error)

    # --- shutdown --------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop every pod's processes (preStop, SIGTERM, grace capped by --shutdown-grace,
        SIGKILL), report them stopped, stop the threads, and leave (delete the Node)."""
        cap = self.options.shutdown_grace
        log("stopping: terminating all pods", pods=len(self.runtimes), grace_cap=f"{cap:g}s")
        hard_deadline = time.monotonic() + cap + 10
        while True:
            for runtime in self.runtimes.values():
                runtime.sync(None if runtime.gone else runtime.pod, shutdown_grace=cap)
                if self._force.is_set():
                    for container in runtime.containers:
                        if container.process is not None:
                            container.process.send(signal.SIGKILL)
            if not any(r.busy for r in self.runtimes.values()):
                break
            if time.monotonic() > hard_deadline:
                log("stopping: processes still running past the deadline; exiting anyway")
                break
            self._wake.wait(0.1)
            self._wake.clear()
        for runtime in self.runtimes.values():
            if not (runtime.gone or runtime.finished or runtime.adopted_terminal):
                self.write_status(runtime, timeout=3.0)
                if runtime.pod["metadata"].get("deletionTimestamp") and not runtime.busy:
                    self.finish_deletion(runtime)
            runtime.release()
        self._threads_stop.set()
        if self.ctx.watchdog is not None:
            self.ctx.watchdog.close()
        try:
            if self.options.keep_node:
                self.node.post_status(ready=False)
            else:
                self.node.deregister()
        except ApiError as error:
            log("could not update the node on exit", error=error)
        log("stopped")
