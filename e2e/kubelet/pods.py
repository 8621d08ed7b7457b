"""One pod on this node: its containers' processes, restarts, probes' verdicts and stops.

`PodRuntime.sync(pod)` is called by the kubelet's reconcile loop (always from the main
thread, see process.py) whenever something may have changed; it starts, restarts and stops
processes, never blocks, and never talks to the API server itself: the kubelet reads
`status()` and writes it, and finishes deletions. Secret/ConfigMap lookups go through the
`Sources` in the context.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.kubelet.command import (
    CommandError,
    LaunchSpec,
    base_environment,
    launch_spec,
    working_dir,
)
from e2e.kubelet.envresolve import ConfigError, Sources, resolve_env
from e2e.kubelet.handlers import RunTarget, run_handler
from e2e.kubelet.images import ImageMap, unmapped_message
from e2e.kubelet.log import log
from e2e.kubelet.podstatus import (
    TERMINAL_PHASES,
    ContainerView,
    pod_status,
    terminated,
    timestamp,
    waiting,
)
from e2e.kubelet.ports import declared_ports, empty_dir_mounts, plan_ports
from e2e.kubelet.probes import ProbeState, parse_probe
from e2e.kubelet.process import GroupWatchdog, Process, StartError, die_with_parent
from e2e.kubelet.restarts import Backoff, should_restart

MINIMUM_GRACE = 2.0  # the kubelet never gives a process less than 2 s after SIGTERM
DEFAULT_GRACE = 30
CONFIG_RETRY = 2.0  # a missing Secret/ConfigMap is looked up again this often
CREATE_RETRY = 10.0


@dataclass
class RuntimeContext:
    """What every pod runtime shares with the kubelet."""

    node_name: str
    state_dir: Path
    image_map: ImageMap
    sources: Sources
    host_env: Mapping[str, str]
    venv_bin: str
    allocatable: Mapping[str, str]
    backoff: Backoff
    wake: Callable[[], None]
    allocate_port: Callable[[], int]
    release_ports: Callable[[Iterable[int]], None]
    watchdog: GroupWatchdog | None = None


@dataclass
class Stopping:
    """A stop in progress: preStop hook, then SIGTERM, then SIGKILL at `kill_at`."""

    reason: str
    deadline: float  # the end of the grace period (the earliest one asked for)
    hook: threading.Thread | None = None
    term_at: float | None = None
    kill_sent: bool = False

    @property
    def kill_at(self) -> float:
        """SIGKILL time: the grace period's end, but never sooner than 2 s after SIGTERM."""
        if self.term_at is None:
            return self.deadline
        return max(self.deadline, self.term_at + MINIMUM_GRACE)


def _iso(moment: Any) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _signal_name(number: int | None) -> str | None:
    if number is None:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


class ContainerRuntime:
    """One container of a pod and its successive runs."""

    def __init__(self, spec: Mapping[str, Any], pod: PodRuntime) -> None:
        self.spec = spec
        self.pod = pod
        self.name: str = spec["name"]
        self.image: str = spec.get("image", "")
        self.process: Process | None = None
        self.exit_handled = True
        self.state: dict[str, Any] = waiting("ContainerCreating")
        self.last_state: dict[str, Any] = {}
        self.runs = 0
        self.restart_offset = 0
        self.step = 0
        self.next_attempt = 0.0
        self.never = False  # will never run (again): unmapped image, or finished for good
        self.forced_restart = False
        self.stopping: Stopping | None = None
        self.target: RunTarget | None = None
        self.image_id = ""

    # --- what the status shows -------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.alive

    @property
    def restart_count(self) -> int:
        return self.restart_offset + max(0, self.runs - 1)

    def _probe(self, kind: str) -> ProbeState | None:
        return self.target.probes.get(kind) if self.target else None

    def view(self) -> ContainerView:
        container_id = f"process://{self.process.pid}" if self.process else None
        if self.running and self.process is not None:
            startup, readiness = self._probe("startup"), self._probe("readiness")
            started = startup.ok if startup else True
            ready = started and (readiness.ok if readiness else True)
            return ContainerView(
                name=self.name,
                image=self.image,
                state={"running": {"startedAt": _iso(self.process.started_at)}},
                last_state=self.last_state,
                restart_count=self.restart_count,
                ready=ready,
                started=started,
                container_id=container_id,
                image_id=self.image_id,
            )
        return ContainerView(
            name=self.name,
            image=self.image,
            state=self.state,
            last_state=self.last_state,
            restart_count=self.restart_count,
            container_id=container_id,
            image_id=self.image_id,
        )

    # --- a kubelet restarted under this pod ------------------------------------------

    def adopt(self, previous: Mapping[str, Any], policy: str) -> None:
        """Carry on from the status a previous kubelet left: its processes died with it."""
        state = previous.get("state") or {}
        count = int(previous.get("restartCount") or 0)
        self.last_state = dict(previous.get("lastState") or {})
        self.restart_offset = count
        done = state.get("terminated")
        if done is not None and not should_restart(policy, int(done.get("exitCode") or 0)):
            self.state, self.never = dict(state), True
            return
        if "running" in state or done is not None:
            if done is not None:
                lost = {"terminated": dict(done)}
            else:
                lost = terminated(
                    137,
                    state["running"].get("startedAt"),
                    timestamp(),
                    reason="ContainerStatusUnknown",
                    message="The container could not be located when the pod was terminated",
                )
            if policy == "Never":
                self.state, self.never = lost, True
                return
            self.last_state = lost
            self.restart_offset = count + 1
        elif "terminated" in self.last_state:
            self.restart_offset = count + 1

    # --- running it ------------------------------------------------------------------

    def _set_waiting(self, reason: str, message: str, retry_in: float) -> None:
        if self.state.get("waiting", {}).get("message") != message:
            log("waiting", pod=self.pod.key, container=self.name, reason=reason, message=message)
        self.state = waiting(reason, message)
        self.next_attempt = time.monotonic() + retry_in

    def _launch(self) -> tuple[LaunchSpec, Mapping[str, str]] | None:
        """The run's LaunchSpec, or None after setting a waiting reason."""
        ctx = self.pod.ctx
        rule = ctx.image_map.lookup(self.image)
        if rule is None:
            self._set_waiting("ImageNotMapped", unmapped_message(self.image), 0)
            self.never = True
            return None
        try:
            env = resolve_env(self.pod.pod, self.spec, ctx.sources, ctx.allocatable)
            mounts = self.pod.mounts(self.spec)
            spec = launch_spec(
                self.spec,
                rule,
                env,
                base_env=self.pod.base_env,
                ports=self.pod.ensure_ports(),
                mounts=mounts,
                cwd=working_dir(self.spec, mounts, str(self.pod.workdir)),
            )
        except ConfigError as error:
            self._set_waiting(error.reason, str(error), CONFIG_RETRY)
            return None
        except CommandError as error:
            self._set_waiting(error.reason, str(error), CREATE_RETRY)
            return None
        self.image_id = f"process://{spec.argv[0]}"
        return spec, mounts

    def start(self) -> None:
        prepared = self._launch()
        if prepared is None:
            return
        spec, mounts = prepared
        self.runs += 1
        restart = self.restart_count > 0
        log_path = self.pod.dir / self.name / f"{self.restart_count}.log"
        try:
            process = Process(spec, log_path, self.pod.ctx.wake, self.pod.ctx.watchdog)
        except StartError as error:
            log("start failed", pod=self.pod.key, container=self.name, error=error)
            now = timestamp()
            self._exited(terminated(128, now, now, reason="StartError", message=str(error)), 0.0)
            return
        self.process, self.exit_handled, self.stopping = process, False, None
        self.state = {}
        now = time.monotonic()
        probes = {}
        for kind in ("startup", "readiness", "liveness"):
            parsed = parse_probe(kind, self.spec.get(f"{kind}Probe"))
            if parsed is not None:
                probes[kind] = ProbeState(parsed, now)
        self.target = RunTarget(
            pod=self.pod.key,
            container=self.spec,
            launch=spec,
            ports=self.pod.ensure_ports(),
            mounts=mounts,
            preexec=die_with_parent(os.getpid()),
            probes=probes,
        )
        log(
            "restarted" if restart else "started",
            pod=self.pod.key,
            container=self.name,
            pid=process.pid,
            restarts=self.restart_count or None,
            log=log_path,
        )

    def _exited(self, state: dict[str, Any], ran: float) -> None:
        """A run ended (or never started): apply the restart policy and backoff."""
        info = state["terminated"]
        forced, self.forced_restart = self.forced_restart, False
        self.stopping = None
        if self.target is not None:
            self.target.stopping = True
        if self.pod.deleting or not should_restart(self.pod.policy, int(info["exitCode"]), forced):
            self.state, self.never = state, True
            return
        delay, self.step = self.pod.ctx.backoff.after_exit(self.step, ran)
        self.last_state = state
        self.next_attempt = time.monotonic() + delay
        if delay > 0:
            meta = self.pod.pod["metadata"]
            self.state = waiting(
                "CrashLoopBackOff",
                f"back-off {delay:g}s restarting failed container={self.name} "
                f"pod={meta['name']}_{meta['namespace']}({meta['uid']})",
            )
            log("back-off", pod=self.pod.key, container=self.name, seconds=f"{delay:g}")
        else:
            self.state = waiting("ContainerCreating")

    def reap(self) -> None:
        """Notice that the current process exited."""
        process = self.process
        if process is None or process.alive or self.exit_handled:
            return
        self.exit_handled = True
        code = process.exit_code or 0
        log(
            "exited",
            pod=self.pod.key,
            container=self.name,
            pid=process.pid,
            code=code,
            signal=_signal_name(process.signal),
        )
        ran = (process.finished_mono or time.monotonic()) - process.started_mono
        self._exited(
            terminated(
                code,
                _iso(process.started_at),
                process.finished_at or timestamp(),
                signal=process.signal,
                container_id=f"process://{process.pid}",
            ),
            ran,
        )

    def due(self, now: float) -> bool:
        """Should a (re)start be attempted now?"""
        return (
            not self.never
            and not self.running
            and (self.process is None or self.exit_handled)
            and now >= self.next_attempt
        )

    def check_probes(self) -> None:
        """A failed liveness probe or a startup probe that gave up kills the run."""
        if not self.running or self.stopping is not None:
            return
        for kind in ("startup", "liveness"):
            probe = self._probe(kind)
            if probe is not None and probe.failed:
                grace = probe.spec.termination_grace
                log(f"killing: {kind} probe failed", self.pod.key, container=self.name)
                self.forced_restart = True
                self.stop(
                    float(grace if grace is not None else self.pod.grace_seconds()),
                    f"{kind} probe failed",
                    run_hook=True,
                )
                return

    # --- stopping it -----------------------------------------------------------------

    def stop(self, grace: float, reason: str, run_hook: bool = True) -> None:
        """Begin (or hurry) stopping the current run: preStop, SIGTERM, SIGKILL after grace."""
        if not self.running:
            return
        deadline = time.monotonic() + max(grace, 0.0)
        if self.stopping is not None:
            self.stopping.deadline = min(self.stopping.deadline, deadline)
            return
        if self.target is not None:
            self.target.stopping = True
        hook = None
        pre_stop = ((self.spec.get("lifecycle") or {}).get("preStop")) or {}
        handler = next((h for h in ("exec", "httpGet", "sleep") if h in pre_stop), None)
        if run_hook and handler and self.target is not None and grace > 0:
            target = self.target
            hook = threading.Thread(
                target=self._pre_stop,
                args=(target, handler, pre_stop[handler], grace),
                name=f"prestop-{self.name}",
                daemon=True,
            )
            hook.start()
        self.stopping = Stopping(reason=reason, deadline=deadline, hook=hook)
        self.drive_stop()

    def _pre_stop(
        self, target: RunTarget, handler: str, action: Mapping[str, Any], grace: float
    ) -> None:
        ok, message = run_handler(target, handler, action, grace)
        if not ok:
            log("preStop hook failed", pod=target.pod, container=self.name, message=message)
        self.pod.ctx.wake()

    def drive_stop(self) -> None:
        """Advance a stop in progress (called on every sync)."""
        stopping, process = self.stopping, self.process
        if stopping is None or process is None or not process.alive:
            return
        now = time.monotonic()
        if stopping.hook is not None and stopping.hook.is_alive() and now < stopping.deadline:
            return
        if stopping.term_at is None:
            stopping.term_at = now
            process.send(signal.SIGTERM)
            log(
                "SIGTERM",
                pod=self.pod.key,
                container=self.name,
                pid=process.pid,
                reason=stopping.reason,
                grace=f"{stopping.kill_at - now:.1f}s",
            )
            return
        if now >= stopping.kill_at and not stopping.kill_sent:
            stopping.kill_sent = True
            process.send(signal.SIGKILL)
            log(
                "SIGKILL: grace period over", pod=self.pod.key, container=self.name, pid=process.pid
            )

    @property
    def busy(self) -> bool:
        """Still running, or its exit not yet accounted for."""
        return self.running or (self.process is not None and not self.exit_handled)


class PodRuntime:
    """A pod bound to this node, from first sight until it is gone from the API."""

    def __init__(self, pod: Mapping[str, Any], ctx: RuntimeContext) -> None:
        meta = pod["metadata"]
        self.ctx = ctx
        self.pod: Mapping[str, Any] = pod
        self.uid: str = meta["uid"]
        self.key = f"{meta['namespace']}/{meta['name']}"
        self.dir = ctx.state_dir / "pods" / f"{meta['namespace']}_{meta['name']}_{self.uid}"
        self.workdir = self.dir / "work"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ports: dict[int, int] | None = None
        self.ports_published = False
        self.gone = False  # removed from the API while we still ran it
        self.finished = False  # deletion completed by us
        self.kubelet_stopping = False
        self.last_written: dict[str, Any] | None = None
        status = pod.get("status") or {}
        self.start_time: str = status.get("startTime") or timestamp()
        self.conditions: list[dict[str, Any]] = [dict(c) for c in status.get("conditions") or []]
        self.adopted_terminal = status.get("phase") in TERMINAL_PHASES
        self.base_env = base_environment(ctx.host_env, ctx.venv_bin, self.hostname)
        self.containers = [ContainerRuntime(c, self) for c in pod["spec"].get("containers") or []]
        previous = {s["name"]: s for s in status.get("containerStatuses") or [] if "name" in s}
        for container in self.containers:
            if container.name in previous:
                container.adopt(previous[container.name], self.policy)
            if self.adopted_terminal:
                container.never = True

    # --- properties ------------------------------------------------------------------

    @property
    def hostname(self) -> str:
        spec = self.pod.get("spec") or {}
        return spec.get("hostname") or self.pod["metadata"]["name"]

    @property
    def policy(self) -> str:
        return (self.pod.get("spec") or {}).get("restartPolicy") or "Always"

    @property
    def deleting(self) -> bool:
        return (
            self.gone
            or self.kubelet_stopping
            or bool(self.pod["metadata"].get("deletionTimestamp"))
        )

    @property
    def busy(self) -> bool:
        return any(c.busy for c in self.containers) or any(
            c.stopping is not None and c.stopping.hook is not None and c.stopping.hook.is_alive()
            for c in self.containers
        )

    def grace_seconds(self) -> float:
        """The pod's deletion grace period (as set on deletion), else its spec's."""
        meta, spec = self.pod["metadata"], self.pod.get("spec") or {}
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds")
        return float(DEFAULT_GRACE if grace is None else grace)

    def ensure_ports(self) -> dict[int, int]:
        if self.ports is None:
            self.ports = plan_ports(declared_ports(self.pod), self.ctx.allocate_port)
        return self.ports

    def mounts(self, container: Mapping[str, Any]) -> dict[str, str]:
        def volume_dir(name: str) -> str:
            path = self.dir / "volumes" / name
            path.mkdir(parents=True, exist_ok=True)
            return str(path)

        return empty_dir_mounts(self.pod, container, volume_dir)

    def targets(self) -> list[RunTarget]:
        """The running containers' probe targets (for the prober thread)."""
        return [
            c.target
            for c in self.containers
            if c.running and c.target is not None and c.target.probes and not c.target.stopping
        ]

    # --- the reconcile step ----------------------------------------------------------

    def sync(self, pod: Mapping[str, Any] | None, shutdown_grace: float | None = None) -> None:
        """Drive the containers toward what `pod` asks (None: the pod is gone from the API).
        `shutdown_grace`: the kubelet is stopping; stop everything within that cap."""
        if pod is not None:
            self.pod = pod
        else:
            self.gone = True
        if shutdown_grace is not None:
            self.kubelet_stopping = True
        for container in self.containers:
            container.reap()
        if self.deleting:
            grace = self.grace_seconds()
            if shutdown_grace is not None:
                grace = min(grace, shutdown_grace)
            reason = "kubelet stopping" if self.kubelet_stopping else "pod deleted"
            for container in self.containers:
                container.stop(grace, reason)
                container.drive_stop()
            return
        if self.adopted_terminal:
            return
        now = time.monotonic()
        for container in self.containers:
            container.check_probes()
            container.drive_stop()
            if container.due(now):
                container.start()

    def status(self) -> dict[str, Any]:
        """The kubelet-owned part of pod.status now (stable while nothing changes)."""
        if self.adopted_terminal:
            return dict(self.pod.get("status") or {})
        current = {c["type"]: c for c in (self.pod.get("status") or {}).get("conditions") or []}
        current.update({c["type"]: c for c in self.conditions})
        # Stopped for good because the pod is being deleted: its phase is final.
        terminal = bool(self.pod["metadata"].get("deletionTimestamp")) and not self.busy
        status = pod_status(
            self.pod,
            [c.view() for c in self.containers],
            list(current.values()),
            self.start_time,
            timestamp(),
            terminal=terminal,
        )
        self.conditions = status["conditions"]
        return status

    def release(self) -> None:
        """Give back this pod's host ports."""
        if self.ports:
            self.ctx.release_ports(self.ports.values())
            self.ports = {}
