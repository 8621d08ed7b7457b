"""Helpers for the e2e suite and bench/operator_e2e.py: polling with a deadline (never a
bare sleep), the chart, and the operator as a local process (the benchmark's; the e2e
suite runs the chart's operator Deployment)."""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from e2e import processes
from e2e.kubeconfig import write_token

ROOT = Path(__file__).resolve().parents[2]
RELEASE = "ebbtide"
SYSTEM_NAMESPACE = "ebbtide-system"
T = TypeVar("T")


def install_chart(helm: str, env: dict[str, str], operator_replicas: int | None = None) -> None:
    """`helm upgrade --install` charts/ebbtide into ebbtide-system, every namespace watched."""
    argv = [helm, "upgrade", "--install", RELEASE, str(ROOT / "charts" / "ebbtide")]
    argv += ["--namespace", SYSTEM_NAMESPACE, "--create-namespace", "--wait", "--timeout", "120s"]
    # A rotated broker password applies within this (60 s by default): e2e waits less.
    argv += ["--set-string", "env[0].name=EBBTIDE_SECRET_REFRESH_SECONDS,env[0].value=5"]
    if operator_replicas is not None:
        argv += ["--set", f"replicaCount={operator_replicas}"]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"helm install failed:\n{result.stdout}\n{result.stderr}"


def uninstall_chart(helm: str, env: dict[str, str]) -> None:
    argv = [helm, "uninstall", RELEASE, "--namespace", SYSTEM_NAMESPACE, "--wait"]
    subprocess.run(argv, env=env, capture_output=True, check=False)


def service_account_kubeconfig(admin_kubeconfig: str, core, path: Path) -> str:
    """A kubeconfig holding a TokenRequest token of the chart's ServiceAccount, so the
    operator has exactly the chart's RBAC: a missing rule fails instead of being masked by
    admin credentials."""
    from kubernetes import client

    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=7200)
    )
    token = core.create_namespaced_service_account_token(
        RELEASE, SYSTEM_NAMESPACE, request
    ).status.token
    cluster = yaml.safe_load(Path(admin_kubeconfig).read_text())["clusters"][0]["cluster"]
    ca_path = path.parent / "ca.crt"
    path.parent.mkdir(parents=True, exist_ok=True)
    ca_path.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    return str(write_token(path, cluster["server"], ca_path, token, "operator", "default"))


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll until `condition()` is truthy and return it; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except AssertionError:
            raise  # a failed check inside the condition is the answer, not a transient error
        except Exception as error:  # noqa: BLE001 - the API may be briefly unavailable
            last_error = error
        if time.monotonic() >= deadline:
            suffix = f" (last error: {last_error})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{suffix}")
        time.sleep(interval)


FORBIDDEN = re.compile(
    r"\(403\)|Reason: Forbidden|APIForbiddenError|\b403\b.*[Ff]orbidden|[Ff]orbidden.*\b403\b"
)


def forbidden_lines(log: str) -> list[str]:
    """The lines of an operator log that record a 403 from the API server: the kubernetes
    client's ApiException prints "(403)" and "Reason: Forbidden" on lines of their own,
    kopf says APIForbiddenError."""
    return [line for line in log.splitlines() if FORBIDDEN.search(line)]


def holds_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Check that `condition()` stays true for `seconds`, failing the moment it does not:
    how a test shows that something does NOT happen (a scale-down while the broker is
    away), for longer than the policy would take to do it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert condition(), f"no longer true: {what}"
        time.sleep(0.2)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


@dataclass
class OperatorProcess:
    """`kopf run -m ebbtide_operator.main`, as the given kubeconfig's identity."""

    popen: subprocess.Popen
    log_path: Path
    health_url: str
    metrics_port: int

    @classmethod
    def start(
        cls, kubeconfig: str, namespaces: list[str], workdir: Path, extra_env: dict[str, str]
    ) -> OperatorProcess:
        from e2e.controlplane import free_port

        workdir.mkdir(parents=True, exist_ok=True)
        health_port, metrics_port = free_port(), free_port()
        argv = [
            str(Path(sys.executable).parent / "kopf"),
            "run",
            "--module=ebbtide_operator.main",
            "--standalone",
            f"--liveness=http://127.0.0.1:{health_port}/healthz",
            *(f"--namespace={ns}" for ns in namespaces),
        ]
        if not namespaces:
            argv.append("--all-namespaces")
        env = {
            **os.environ,
            "KUBECONFIG": kubeconfig,
            "EBBTIDE_OPERATOR_METRICS_PORT": str(metrics_port),
            **extra_env,
        }
        log_path = workdir / "operator.log"
        popen = processes.spawn(argv, log_path, env=env, attached=True)
        process = cls(popen, log_path, f"http://127.0.0.1:{health_port}/healthz", metrics_port)
        wait_for(process.healthy, 60, "the operator's liveness endpoint")
        return process

    def healthy(self) -> bool:
        if self.popen.poll() is not None:
            raise AssertionError(
                f"the operator exited ({self.popen.returncode}):\n{tail(self.log_path)}"
            )
        try:
            with urllib.request.urlopen(self.health_url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def log(self) -> str:
        return tail(self.log_path, 80)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def recreate_namespace(core: Any, name: str, timeout: float = 120) -> None:
    """`name` empty and new: a leftover from an earlier run is deleted (and waited for)
    first. The benches' fresh start on a long-lived control plane."""
    from kubernetes import client

    def present() -> bool:
        return name in {n.metadata.name for n in core.list_namespace().items}

    if present():
        core.delete_namespace(name)
        wait_for(lambda: not present(), timeout, f"the old namespace {name} gone")
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
