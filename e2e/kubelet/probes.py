"""Container probes: their settings, their threshold bookkeeping, and running one.

Readiness, liveness and startup probes with httpGet, tcpSocket or exec handlers, honouring
initialDelaySeconds, periodSeconds, timeoutSeconds, successThreshold and failureThreshold
with the Kubernetes defaults. gRPC probes are not supported: they count as successes (the
kubelet logs so once). A readiness probe starts failed, liveness and startup probes start
passed-until-proven-otherwise, as in the kubelet.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import ssl
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

USER_AGENT = "kube-probe/1.36"


@dataclass(frozen=True)
class ProbeSpec:
    kind: str  # readiness | liveness | startup
    handler: str  # httpGet | tcpSocket | exec | grpc
    action: Mapping[str, Any]
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3
    termination_grace: int | None = None


def parse_probe(kind: str, probe: Mapping[str, Any] | None) -> ProbeSpec | None:
    """A container's readinessProbe/livenessProbe/startupProbe, defaults filled in."""
    if not probe:
        return None
    handler = next((h for h in ("httpGet", "tcpSocket", "exec", "grpc") if h in probe), None)
    if handler is None:
        return None
    return ProbeSpec(
        kind=kind,
        handler=handler,
        action=probe[handler] or {},
        initial_delay=float(probe.get("initialDelaySeconds") or 0),
        period=float(probe.get("periodSeconds") or 10),
        timeout=float(probe.get("timeoutSeconds") or 1),
        success_threshold=int(probe.get("successThreshold") or 1),
        failure_threshold=int(probe.get("failureThreshold") or 3),
        termination_grace=probe.get("terminationGracePeriodSeconds"),
    )


@dataclass
class ProbeState:
    """One probe of one container run: when it is next due and what it concluded.

    `ok` starts False for readiness and startup probes (not ready, not started yet) and
    True for liveness; it flips after successThreshold successes or failureThreshold
    failures in a row. A startup probe that never succeeds is `exhausted`."""

    spec: ProbeSpec
    started_at: float  # monotonic start of the container run
    ok: bool = field(init=False)
    successes: int = 0
    failures: int = 0
    next_due: float = field(init=False)
    in_flight: bool = False
    last_message: str = ""

    def __post_init__(self) -> None:
        self.ok = self.spec.kind == "liveness"
        self.next_due = self.started_at + self.spec.initial_delay

    @property
    def exhausted(self) -> bool:
        return self.failures >= self.spec.failure_threshold

    def record(self, ok: bool, now: float, message: str = "") -> bool:
        """Count one result; True when that changed what the probe concludes."""
        before = (self.ok, self.failed)
        self.next_due = now + self.spec.period
        self.last_message = message
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            if not self.ok and self.successes >= self.spec.success_threshold:
                self.ok = True
        else:
            self.successes, self.failures = 0, self.failures + 1
            if self.ok and self.exhausted:
                self.ok = False
        return (self.ok, self.failed) != before

    @property
    def failed(self) -> bool:
        """A liveness probe that failed, or a startup probe that gave up: kill the container."""
        if self.spec.kind == "liveness":
            return not self.ok
        if self.spec.kind == "startup":
            return not self.ok and self.exhausted
        return False


def http_get(
    host: str,
    port: int,
    path: str,
    scheme: str,
    headers: Sequence[Mapping[str, str]],
    timeout: float,
) -> tuple[bool, str]:
    """Success is a status in [200, 400), like the kubelet (redirects are not followed)."""
    if scheme.upper() == "HTTPS":
        context = ssl._create_unverified_context()  # noqa: S323 - probes skip verification, like the kubelet
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=timeout, context=context
        )
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        sent = {"User-Agent": USER_AGENT, "Accept": "*/*"}
        sent.update({h["name"]: h.get("value", "") for h in headers if h.get("name")})
        conn.request("GET", path or "/", headers=sent)
        response = conn.getresponse()
        response.read(10_000)
        ok = 200 <= response.status < 400
        return ok, f"HTTP probe failed with statuscode: {response.status}" if not ok else ""
    except (OSError, http.client.HTTPException) as error:
        return False, f'Get "{scheme.lower()}://{host}:{port}{path}": {error}'
    finally:
        conn.close()


def tcp_connect(host: str, port: int, timeout: float) -> tuple[bool, str]:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, ""
    except OSError as error:
        return False, f"dial tcp {host}:{port}: {error}"


def run_exec(
    argv: Sequence[str], env: Mapping[str, str], cwd: str, timeout: float, preexec: Any = None
) -> tuple[bool, str]:
    """Exit code 0 is success; a timeout kills the command's whole process group."""
    try:
        process = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,  # noqa: PLW1509 - PR_SET_PDEATHSIG, see process.py
        )
    except OSError as error:
        return False, str(error)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.communicate()
        return False, f"command timed out after {timeout:g}s"
    text = output.decode(errors="replace").strip()[-500:]
    return process.returncode == 0, text if process.returncode else ""
