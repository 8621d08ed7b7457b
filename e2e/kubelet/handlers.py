"""Running a probe or lifecycle-hook handler (httpGet, tcpSocket, exec, sleep) against one
container run, with the run's host ports, environment and working directory.

exec commands are `$(VAR)`-expanded against the container's literal env values only, as the
kubelet's ExpandContainerCommandOnlyStatic does, then get the same host-port and emptyDir
substitution as the container's args.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from e2e.kubelet.command import LaunchSpec
from e2e.kubelet.expansion import expand_all
from e2e.kubelet.ports import probe_port, substitute_paths, substitute_ports
from e2e.kubelet.probes import ProbeState, http_get, run_exec, tcp_connect


@dataclass
class RunTarget:
    """What probes and hooks of one container run need; replaced on every restart."""

    pod: str  # ns/name, for logs
    container: Mapping[str, Any]
    launch: LaunchSpec
    ports: Mapping[int, int]
    mounts: Mapping[str, str]
    preexec: Callable[[], None] | None = None
    probes: dict[str, ProbeState] = field(default_factory=dict)
    stopping: bool = False


def static_env(container: Mapping[str, Any]) -> dict[str, str]:
    """name -> literal value ('' for valueFrom entries), like the kubelet's EnvVarsToMap."""
    return {var["name"]: var.get("value") or "" for var in container.get("env") or []}


def run_handler(
    target: RunTarget, handler: str, action: Mapping[str, Any], timeout: float
) -> tuple[bool, str]:
    """(success, message) of one handler run, bounded by `timeout` seconds."""
    try:
        return _run(target, handler, action, timeout)
    except ValueError as error:  # a port name the container does not declare, say
        return False, str(error)


def _run(
    target: RunTarget, handler: str, action: Mapping[str, Any], timeout: float
) -> tuple[bool, str]:
    host = action.get("host") or "127.0.0.1"
    if handler == "httpGet":
        port = probe_port(action.get("port", 80), target.container, target.ports)
        return http_get(
            host,
            port,
            action.get("path") or "/",
            action.get("scheme") or "HTTP",
            action.get("httpHeaders") or [],
            timeout,
        )
    if handler == "tcpSocket":
        port = probe_port(action.get("port", 0), target.container, target.ports)
        return tcp_connect(host, port, timeout)
    if handler == "exec":
        argv = expand_all(action.get("command") or [], static_env(target.container))
        if not argv:
            return False, "exec handler without a command"
        argv = [
            argv[0],
            *(substitute_paths(substitute_ports(a, target.ports), target.mounts) for a in argv[1:]),
        ]
        return run_exec(argv, target.launch.env, target.launch.cwd, timeout, target.preexec)
    if handler == "sleep":
        time.sleep(min(float(action.get("seconds") or 0), timeout))
        return True, ""
    if handler == "grpc":
        return True, "grpc handlers are not supported by the process kubelet: counted as success"
    return False, f"unsupported handler {handler}"
