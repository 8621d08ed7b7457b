"""The probe loop: runs due probes of running containers on a small thread pool, so a slow
probe never delays the reconcile loop or another pod's probes, and wakes the reconcile loop
when a probe's verdict changes (ready, not ready, failed).

A startup probe gates the others: readiness and liveness start once it has succeeded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from e2e.kubelet.handlers import RunTarget, run_handler
from e2e.kubelet.log import log
from e2e.kubelet.probes import ProbeState

TICK = 0.1


class Prober:
    def __init__(self, wake: Callable[[], None], workers: int = 8) -> None:
        self.wake = wake
        self.targets: list[RunTarget] = []  # replaced wholesale by the reconcile loop
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe")

    def _due(self, target: RunTarget, now: float) -> list[ProbeState]:
        startup = target.probes.get("startup")
        due = []
        for kind, probe in target.probes.items():
            if kind == "startup" and probe.ok:
                continue
            if kind != "startup" and startup is not None and not startup.ok:
                continue
            if probe.in_flight or now < probe.next_due:
                continue
            due.append(probe)
        return due

    def _run(self, target: RunTarget, probe: ProbeState) -> None:
        try:
            ok, message = run_handler(
                target, probe.spec.handler, probe.spec.action, probe.spec.timeout
            )
        except Exception as error:  # noqa: BLE001 - a probe must never kill the prober
            ok, message = False, f"probe error: {error}"
        try:
            if target.stopping:
                return
            if probe.record(ok, time.monotonic(), message):
                log(
                    f"{probe.spec.kind} probe {'succeeded' if probe.ok else 'failed'}",
                    pod=target.pod,
                    container=target.container.get("name"),
                    message=message or None,
                )
                self.wake()
        finally:
            probe.in_flight = False

    def run(self, stop: threading.Event) -> None:
        """The prober's thread, until `stop`."""
        while not stop.wait(TICK):
            now = time.monotonic()
            for target in list(self.targets):
                if target.stopping:
                    continue
                for probe in self._due(target, now):
                    probe.in_flight = True
                    self._pool.submit(self._run, target, probe)
        self._pool.shutdown(wait=False, cancel_futures=True)
