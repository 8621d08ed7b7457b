"""The Node this kubelet registers, its status, and its Lease in kube-node-lease.

The node-lifecycle controller marks a node NotReady (and taints it, and eventually evicts
its pods) when its Lease stops being renewed; renewing it every ~10 s, and posting Ready
status as often, keeps the node healthy. Builders here are pure; `NodeAgent` does the I/O.
"""

from __future__ import annotations

import os
import platform
import shutil
import threading
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from e2e.kubelet.api import Api, ApiError
from e2e.kubelet.downward import LOOPBACK
from e2e.kubelet.log import log
from e2e.kubelet.podstatus import timestamp

LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40
PROCESS_KUBELET_LABEL = "e2e.ebbtide.dev/process-kubelet"


def micro_time(moment: datetime | None = None) -> str:
    """A metav1.MicroTime (what Lease.spec.renewTime wants)."""
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def host_capacity(max_pods: int, disk_path: str) -> dict[str, str]:
    """cpu, memory, pods and ephemeral-storage of this machine."""
    memory_kib = 0
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    memory_kib = int(line.split()[1])
    except OSError:
        pass
    disk_kib = shutil.disk_usage(disk_path).total // 1024
    return {
        "cpu": str(os.cpu_count() or 1),
        "memory": f"{memory_kib}Ki",
        "pods": str(max_pods),
        "ephemeral-storage": f"{disk_kib}Ki",
    }


def _arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def node_labels(name: str) -> dict[str, str]:
    return {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": _arch(),
        PROCESS_KUBELET_LABEL: "true",
    }


def node_status(capacity: Mapping[str, str], version: str, now: str, ready: bool = True) -> dict:
    """Ready (or not), no pressure, loopback addresses, capacity = allocatable."""

    def cond(kind: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
        return {
            "type": kind,
            "status": "True" if ok else "False",
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }

    return {
        "capacity": dict(capacity),
        "allocatable": dict(capacity),
        "conditions": [
            cond(
                "MemoryPressure",
                False,
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            cond("DiskPressure", False, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond(
                "PIDPressure",
                False,
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            cond(
                "Ready",
                ready,
                "KubeletReady" if ready else "KubeletNotReady",
                "process kubelet is posting ready status"
                if ready
                else "process kubelet is stopping",
            ),
        ],
        "addresses": [
            {"type": "InternalIP", "address": LOOPBACK},
            {"type": "Hostname", "address": platform.node() or "localhost"},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, platform.node()).hex,
            "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, platform.node())),
            "bootID": _boot_id(),
            "kernelVersion": platform.release(),
            "osImage": "process kubelet (no container runtime)",
            "containerRuntimeVersion": "process://0.1.0",
            "kubeletVersion": version,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": _arch(),
        },
    }


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def preserve_transitions(new: dict, old: Mapping[str, Any] | None) -> dict:
    """Keep each condition's lastTransitionTime while its status is unchanged."""
    before = {c.get("type"): c for c in ((old or {}).get("conditions") or [])}
    for cond in new["conditions"]:
        prior = before.get(cond["type"])
        if prior and prior.get("status") == cond["status"] and prior.get("lastTransitionTime"):
            cond["lastTransitionTime"] = prior["lastTransitionTime"]
    return new


def lease_body(name: str, node_uid: str, renew: str) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "namespace": LEASE_NAMESPACE,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid}
            ],
        },
        "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": renew},
    }


class NodeAgent:
    """Registers the Node, heartbeats it (status + Lease) from a thread, removes it."""

    def __init__(self, api: Api, name: str, capacity: Mapping[str, str], interval: float) -> None:
        self.api = api
        self.name = name
        self.capacity = dict(capacity)
        self.interval = interval
        self.version = "v0.0.0"
        self.uid = ""
        self._last_status: dict | None = None

    @property
    def path(self) -> str:
        return f"/api/v1/nodes/{self.name}"

    def register(self) -> None:
        """Create (or adopt a leftover) Node, post Ready status, take the Lease."""
        try:
            self.version = self.api.request("GET", "/version").get("gitVersion", self.version)
        except ApiError:
            pass
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": node_labels(self.name)},
            "spec": {},
        }
        try:
            node = self.api.request("POST", "/api/v1/nodes", body=body)
            log("registered node", node=self.name, version=self.version)
        except ApiError as error:
            if error.status != 409:
                raise
            node = self.api.request(
                "PATCH",
                self.path,
                body={
                    "metadata": {"labels": node_labels(self.name)},
                    "spec": {"unschedulable": False},
                },
                content_type="application/merge-patch+json",
            )
            log("adopted existing node", node=self.name)
        self.uid = node["metadata"]["uid"]
        self.post_status(ready=True)
        self.renew_lease()

    def post_status(self, ready: bool = True) -> None:
        status = preserve_transitions(
            node_status(self.capacity, self.version, timestamp(), ready), self._last_status
        )
        self.api.request(
            "PATCH",
            f"{self.path}/status",
            body={"status": status},
            content_type="application/strategic-merge-patch+json",
        )
        self._last_status = status

    def renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{self.name}"
        renew = micro_time()
        try:
            self.api.request(
                "PATCH",
                path,
                body={"spec": {"holderIdentity": self.name, "renewTime": renew}},
                content_type="application/merge-patch+json",
            )
        except ApiError as error:
            if error.status != 404:
                raise
            self.api.request(
                "POST",
                f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases",
                body=lease_body(self.name, self.uid, renew),
            )

    def heartbeat(self, stop: threading.Event) -> None:
        """Renew the Lease and refresh Ready every `interval` seconds until `stop`."""
        while not stop.wait(self.interval):
            try:
                self.renew_lease()
                self.post_status(ready=True)
            except ApiError as error:
                if error.status == 404:  # someone deleted the Node: register again
                    try:
                        self.register()
                    except ApiError as again:
                        log("node re-registration failed", error=again)
                else:
                    log("node heartbeat failed", error=error)

    def deregister(self) -> None:
        """Leave: delete the Lease and the Node (best effort)."""
        lease = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{self.name}"
        for path in (lease, self.path):
            try:
                self.api.request("DELETE", path)
            except ApiError as error:
                if error.status != 404:
                    log("could not delete", path=path, error=error)
        log("left the cluster: node deleted", node=self.name)
