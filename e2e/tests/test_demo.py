"""`make demo` (scripts/demo.sh) run for real on the session's cluster, then stopped with
Ctrl-C (SIGINT) as a user stops it: it exits 130, and its teardown really removes what it
made: the demo namespace and its pods, the chart's release, Roles and namespace, and every
process it started. Every wait has a deadline.

The demo installs the chart under the session's release name (`ebbtide` in
ebbtide-system), so this test replaces the session's operator: it runs after the others
(`replaces_operator`) and installs the session's chart again at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from kubernetes import client

from e2e.tests.kit import (
    GROUP,
    PLURAL,
    ROOT,
    VERSION,
    install_operator_chart,
    operator_pod,
)
from e2e.tests.support import RELEASE, SYSTEM_NAMESPACE, tail, wait_for

pytestmark = pytest.mark.replaces_operator
DEMO_NS = "ebbtide-demo"


def namespace_gone(core, name: str) -> bool:
    try:
        core.read_namespace(name)
    except client.ApiException as error:
        if error.status == 404:
            return True
        raise
    return False


def group_alive(pgid: int) -> bool:
    """Whether any process of the demo's process group (its kubectl watches) still runs."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def default_sigint() -> None:
    """SIGINT as a terminal leaves it: a test run started in the background (`make e2e &`)
    ignores it, and bash cannot trap a signal that was ignored when it started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def delete_demo_taskqueue(custom) -> None:
    """While an operator still runs (kopf's finalizer), so the namespace can go."""
    try:
        custom.delete_namespaced_custom_object(GROUP, VERSION, DEMO_NS, PLURAL, "demo")
    except client.ApiException as error:
        if error.status != 404:
            raise
        return
    wait_for(
        lambda: not custom.list_namespaced_custom_object(GROUP, VERSION, DEMO_NS, PLURAL)["items"],
        60,
        "the demo's TaskQueue deleted",
    )


def terminating(core, name: str) -> bool:
    try:
        return core.read_namespace(name).metadata.deletion_timestamp is not None
    except client.ApiException as error:
        if error.status == 404:
            return False
        raise


def test_the_demo_tears_everything_down_on_ctrl_c(kube_env, core, custom, operator, tmp_path: Path):
    log_path = tmp_path / "demo.log"
    env = {
        **kube_env.env,
        "PATH": f"{kube_env.bin_dir}:{os.environ.get('PATH', '')}"
        if kube_env.bin_dir
        else os.environ.get("PATH", ""),
        "EBBTIDE_DEMO_BURST": "1500",
        "EBBTIDE_DEMO_TASK_SECONDS": "0.2",
    }
    env.pop("EBBTIDE_DEMO_SECONDS", None)  # run until Ctrl-C
    with log_path.open("w") as log:
        demo = subprocess.Popen(
            ["bash", str(ROOT / "scripts" / "demo.sh")],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal gives it
            preexec_fn=default_sigint,
        )
    try:

        def scaled_up() -> bool:
            assert demo.poll() is None, f"the demo exited ({demo.returncode}):\n{tail(log_path)}"
            tq = custom.get_namespaced_custom_object(GROUP, VERSION, DEMO_NS, PLURAL, "demo")
            status = tq.get("status", {})
            enqueued = "enqueued 1500" in log_path.read_text(errors="replace")
            # Scaled up (or, the burst already drained, scaled at all: it starts at 1).
            scaled = (status.get("desiredReplicas") or 0) > 1 or status.get("lastScaleTime")
            return enqueued and bool(scaled)

        wait_for(scaled_up, 180, "the demo's burst enqueued and its workers scaling up")
        assert core.list_namespaced_pod(DEMO_NS).items, "the demo runs pods"
        demo.send_signal(signal.SIGINT)  # Ctrl-C: to the script, as the terminal would
        try:
            returncode = demo.wait(timeout=180)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo's teardown did not end in 180 s:\n{tail(log_path)}")
        assert returncode == 130, tail(log_path)
        assert "tearing down" in log_path.read_text(errors="replace")

        # What it made is gone (the namespace of the system may still be terminating).
        wait_for(lambda: namespace_gone(core, DEMO_NS), 120, f"namespace {DEMO_NS} deleted")
        wait_for(lambda: namespace_gone(core, SYSTEM_NAMESPACE), 120, f"{SYSTEM_NAMESPACE} deleted")
        releases = subprocess.run(
            [kube_env.tool("helm"), "list", "-A", "-q"],
            env=kube_env.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert RELEASE not in releases, releases
        rbac = client.RbacAuthorizationV1Api(core.api_client)
        left = [
            r.metadata.name
            for r in rbac.list_cluster_role().items
            if r.metadata.name == RELEASE or r.metadata.name.startswith(f"{RELEASE}-")
        ]
        assert not left, f"ClusterRoles left behind: {left}"
        demo_pods = core.list_pod_for_all_namespaces(
            label_selector="ebbtide.dev/taskqueue=demo"
        ).items
        assert not demo_pods, [p.metadata.name for p in demo_pods]
        # The CRD was there before the demo (the session's chart): the demo keeps it.
        assert custom.list_cluster_custom_object(GROUP, VERSION, PLURAL) is not None
        wait_for(lambda: not group_alive(demo.pid), 30, "every process of the demo gone")
    finally:
        if demo.poll() is None:  # its teardown did not run: clean up after it
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
            delete_demo_taskqueue(custom)
            core.delete_namespace(DEMO_NS)
        # The session's operator, back as the other tests had it.
        if terminating(core, SYSTEM_NAMESPACE):
            wait_for(
                lambda: namespace_gone(core, SYSTEM_NAMESPACE), 120, f"{SYSTEM_NAMESPACE} deleted"
            )
        restored = install_operator_chart(kube_env)
        assert restored.returncode == 0, f"{restored.stdout}\n{restored.stderr}"
        wait_for(lambda: operator_pod(core, SYSTEM_NAMESPACE), 120, "the session's operator")
