"""Per-pod host ports, because every pod here shares the host's loopback.

Three replicas of a Deployment all declare `containerPort: 9100` and pass `--metrics-port
9100`; on one network namespace only one could bind it. So each pod gets its own free host
port for each declared containerPort (or the declared `hostPort`, when there is one), and the
kubelet substitutes it for the declared number in the container's command/args (all but
the executable) and env values, after `$(VAR)` expansion. Only whole tokens are replaced:
a run of digits equal to the declared port, not touching a letter, digit, `_` or `.`
(`9100`, `--port=9100`, `http://0.0.0.0:9100/x` are; `19100`, `9100.5`, `v9100` are not).
Probes on a named or numbered declared port go to the host port.

emptyDir volumes get similar treatment: a mount path standing as a path of its own (not
inside a longer path or a URL), or a path under it, is rewritten to a per-pod directory.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_NUMBER = re.compile(r"(?<![\w.])\d+(?![\w.])")


@dataclass(frozen=True)
class DeclaredPort:
    container: str
    name: str | None
    container_port: int
    host_port: int | None


def declared_ports(pod: Mapping[str, Any]) -> list[DeclaredPort]:
    """Every containerPort of every container (the pod shares one network namespace)."""
    ports = []
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if "containerPort" not in port:
                continue
            ports.append(
                DeclaredPort(
                    container=container.get("name", ""),
                    name=port.get("name"),
                    container_port=int(port["containerPort"]),
                    host_port=int(port["hostPort"]) if port.get("hostPort") else None,
                )
            )
    return ports


def plan_ports(declared: list[DeclaredPort], allocate: Callable[[], int]) -> dict[int, int]:
    """containerPort -> host port: the declared hostPort, else a fresh one from `allocate`."""
    plan: dict[int, int] = {}
    for port in declared:
        if port.container_port in plan:
            continue
        plan[port.container_port] = port.host_port or allocate()
    return plan


def substitute_ports(value: str, plan: Mapping[int, int]) -> str:
    """Replace whole-token occurrences of declared ports with their host ports."""
    if not plan:
        return value

    def replace(match: re.Match[str]) -> str:
        number = int(match.group(0))
        return str(plan.get(number, match.group(0)))

    return _NUMBER.sub(replace, value)


def named_ports(container: Mapping[str, Any]) -> dict[str, int]:
    """A container's port names -> containerPort (what probes' `port: name` refer to)."""
    return {
        port["name"]: int(port["containerPort"])
        for port in container.get("ports") or []
        if port.get("name") and "containerPort" in port
    }


def probe_port(port: int | str, container: Mapping[str, Any], plan: Mapping[int, int]) -> int:
    """The host port a probe or hook on `port` (a number or a port name) should reach."""
    if isinstance(port, str) and not port.isdigit():
        names = named_ports(container)
        if port not in names:
            raise ValueError(
                f"port {port!r} is not a named port of container {container.get('name')}"
            )
        number = names[port]
    else:
        number = int(port)
    return plan.get(number, number)


def free_port(exclude: set[int] | frozenset[int] = frozenset()) -> int:
    """A currently free TCP port on loopback (and not one already handed out)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in exclude:
            return port
    raise RuntimeError("no free port on 127.0.0.1")


def empty_dir_mounts(
    pod: Mapping[str, Any], container: Mapping[str, Any], volume_dir: Callable[[str], str]
) -> dict[str, str]:
    """mountPath -> local directory for the container's emptyDir mounts."""
    volumes = {
        volume["name"]: volume
        for volume in (pod.get("spec") or {}).get("volumes") or []
        if "emptyDir" in volume
    }
    mounts = {}
    for mount in container.get("volumeMounts") or []:
        path = (mount.get("mountPath") or "").rstrip("/")
        if mount.get("name") in volumes and path:  # never remap "/" itself
            base = volume_dir(mount["name"])
            sub = mount.get("subPath")
            mounts[path] = f"{base}/{sub}" if sub else base
    return mounts


def substitute_paths(
    value: str, mounts: Mapping[str, str], exists: Callable[[str], bool] = os.path.exists
) -> str:
    """Rewrite mount paths (and paths under them) that stand as paths of their own in
    `value`: `/data`, `/data/x`, `--dir=/data`, `test -e /data/ready`, but not `/var/data`,
    `/database` or `http://host/data`. A path under the mount that already exists on this
    machine is left alone: with an emptyDir on `/tmp`, `PYTHONPATH=/tmp/checkout/apps`
    names the host's files (a checkout under /tmp), not the pod's scratch space."""
    if not mounts:
        return value
    alternatives = "|".join(re.escape(path) for path in sorted(mounts, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w./~-])({alternatives})(/[^\s:=,;'\"]*)?(?=$|[^\w.~-])")

    def replace(match: re.Match[str]) -> str:
        mount, rest = match.group(1), match.group(2) or ""
        if rest.strip("/") and exists(mount + rest):
            return match.group(0)
        return mounts[mount] + rest

    return pattern.sub(replace, value)
