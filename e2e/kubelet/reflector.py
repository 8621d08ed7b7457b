"""A local copy of the pods matching one field selector, kept fresh by list + watch.

List, then watch from the list's resourceVersion. When the watch ends it resumes from the
last resourceVersion seen (bookmarks included); on 410 Gone (the version is too old), on any
error, and every `resync` seconds anyway (a fallback should a watch silently miss events),
it lists again and replaces the copy. `on_change` is called after every change, so the
reconcile loop wakes at once instead of polling.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from e2e.kubelet.api import Api, ApiError
from e2e.kubelet.log import log

Pod = dict[str, Any]
PODS = "/api/v1/pods"


class Gone(Exception):
    """The watch's resourceVersion expired: list again."""


class PodReflector:
    def __init__(
        self,
        api: Api,
        field_selector: str,
        on_change: Callable[[], None],
        resync: float = 30.0,
        name: str = "pods",
    ) -> None:
        self.api = api
        self.field_selector = field_selector
        self.on_change = on_change
        self.resync = resync
        self.name = name
        self.synced = threading.Event()
        self._pods: dict[str, Pod] = {}
        self._lock = threading.Lock()

    def snapshot(self) -> dict[str, Pod]:
        """uid -> pod, as last seen."""
        with self._lock:
            return dict(self._pods)

    def _relist(self) -> str:
        listing = self.api.request("GET", PODS, query={"fieldSelector": self.field_selector})
        pods = {pod["metadata"]["uid"]: pod for pod in listing.get("items") or []}
        with self._lock:
            changed = {
                uid: pod["metadata"].get("resourceVersion") for uid, pod in pods.items()
            } != {uid: pod["metadata"].get("resourceVersion") for uid, pod in self._pods.items()}
            self._pods = pods
        self.synced.set()
        if changed:
            self.on_change()
        return listing["metadata"]["resourceVersion"]

    def _apply(self, event_type: str, pod: Pod) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            if event_type == "DELETED":
                self._pods.pop(uid, None)
            else:
                self._pods[uid] = pod
        self.on_change()

    def _watch_until(self, version: str, deadline: float, stop: threading.Event) -> str:
        """Follow the watch until `deadline` (monotonic); the last resourceVersion seen."""
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return version
            query = {"fieldSelector": self.field_selector, "resourceVersion": version}
            for event in self.api.watch(PODS, query, max(1, min(int(remaining), 60))):
                if stop.is_set():
                    return version
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone(obj.get("message", "410 Gone"))
                    raise ApiError(obj.get("code") or 0, obj.get("message", "watch error"))
                version = obj.get("metadata", {}).get("resourceVersion") or version
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._apply(kind, obj)
        return version

    def run(self, stop: threading.Event) -> None:
        """The reflector's thread: list, watch, repeat until `stop`."""
        failures = 0
        while not stop.is_set():
            try:
                version = self._relist()
                failures = 0
                self._watch_until(version, time.monotonic() + self.resync, stop)
            except Gone as gone:
                log("watch expired, relisting", watch=self.name, reason=gone)
            except (ApiError, ValueError, KeyError) as error:
                failures += 1
                log("watch failed, retrying", watch=self.name, error=error)
                stop.wait(min(5.0, 0.5 * failures))
