"""Two operator replicas (the chart with replicaCount 2: kopf peering, one active) on the
real cluster: the active one is SIGKILLed mid-burst. The standby takes over within 15 s of
the death, replicas keep rising, every task runs, no two operators ever write the
TaskQueue's status in turn, and the new leader's first decisions carry on from the state
the old one persisted (what the policy does once the burst is done is not this test's).

Who ticks is observable from the TaskQueue itself: every status write names its writer
(`status.writer`, `<pod>/<incarnation>#<serial>`, operator/ebbtide_operator/fence.py), and
a watch records every version of the object. Two operators ticking the same TaskQueue at
once would show as writers alternating; a takeover is exactly one change of writer.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass

import pytest
import redis
from ebbtide_operator import fence
from kubernetes import watch

from e2e import node
from e2e.tests.kit import (
    GROUP,
    OPERATOR_SELECTOR,
    PLURAL,
    RUNS,
    TRACKER,
    VERSION,
    condition,
    create_tq,
    enqueue,
    external,
    install_operator_chart,
    pod_ready,
    put_secret,
    read_tq,
    taskqueue,
    tracker,
    via_cluster_ip,
)
from e2e.tests.support import SYSTEM_NAMESPACE, wait_for

pytestmark = pytest.mark.replaces_operator
BURST = 240  # 1 s tasks, 2 slots per pod: 120 s of work for one pod, 12 s for ten
TASK_S = 1.0
MAX_REPLICAS = 10
TAKEOVER_TARGET_S = 15.0  # the chart's peering lifetime is 10 s


@dataclass(frozen=True)
class Version:
    """One version of the TaskQueue, as the watch delivered it."""

    at: float  # wall clock when it arrived
    status: dict

    @property
    def writer(self) -> str | None:
        return fence.written_by({"status": self.status})

    @property
    def incarnation(self) -> str | None:
        """`<pod>/<incarnation>`: one operator process."""
        return self.writer.rsplit("#", 1)[0] if self.writer else None


class StatusLog:
    """Every version of one TaskQueue, from a watch in a thread."""

    def __init__(self, custom, namespace: str, name: str) -> None:
        self.custom, self.namespace, self.name = custom, namespace, name
        self.versions: list[Version] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tq-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            stream = watch.Watch().stream(
                self.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                field_selector=f"metadata.name={self.name}",
                timeout_seconds=2,  # `_stop` is seen within 2 s
            )
            for event in stream:
                if event["type"] in ("ADDED", "MODIFIED"):
                    status = event["object"].get("status") or {}
                    self.versions.append(Version(time.time(), status))
                if self._stop.is_set():
                    break

    def written(self) -> list[Version]:
        """The versions whose status some operator wrote, one per write, in order."""
        out: list[Version] = []
        for version in list(self.versions):
            if version.writer and (not out or out[-1].writer != version.writer):
                out.append(version)
        return out

    def __enter__(self) -> StatusLog:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def operator_pods(core) -> list:
    return core.list_namespaced_pod(SYSTEM_NAMESPACE, label_selector=OPERATOR_SELECTOR).items


def replicas(apps, namespace: str, name: str) -> int:
    return apps.read_namespaced_deployment(f"{name}-worker", namespace).spec.replicas or 0


def sigkill_operator(kube_env, core, pod: str) -> None:
    """SIGKILL the operator container's process from the node: no goodbye to the peering,
    so the standby waits for its keep-alive to expire. The kubelet restarts the container,
    which rejoins as the youngest, a standby. On a cluster that is not ours (kind): a
    forced pod delete."""
    if not kube_env.local:
        core.delete_namespaced_pod(pod, SYSTEM_NAMESPACE, grace_period_seconds=0)
        return
    status = core.read_namespaced_pod(pod, SYSTEM_NAMESPACE).status
    container = status.container_statuses[0].container_id.split("://", 1)[1]
    tasks = node.ctr("tasks", "list").stdout.splitlines()[1:]  # TASK PID STATUS
    pid = next(int(cols[1]) for cols in map(str.split, tasks) if cols and cols[0] == container)
    os.kill(pid, signal.SIGKILL)


def two_operators(kube_env, core) -> list[str]:
    """The session's release with replicaCount 2; both pods Ready (a standby is Ready too:
    its liveness endpoint answers while paused)."""
    upgraded = install_operator_chart(kube_env, "--set", "replicaCount=2")
    assert upgraded.returncode == 0, f"{upgraded.stdout}\n{upgraded.stderr}"

    def both() -> list[str] | None:
        """Two Ready pods and no other: the standalone pod of before is gone."""
        pods = operator_pods(core)
        ready = [
            p.metadata.name for p in pods if pod_ready(p) and not p.metadata.deletion_timestamp
        ]
        return ready if len(pods) == len(ready) == 2 else None

    return wait_for(both, 120, "two operator replicas Ready")


def one_operator(kube_env, core) -> None:
    """Back to the session's single operator (Recreate: never two at once)."""
    restored = install_operator_chart(kube_env)
    assert restored.returncode == 0, f"{restored.stdout}\n{restored.stderr}"
    wait_for(
        lambda: (lambda pods: len(pods) == 1 and pod_ready(pods[0]))(operator_pods(core)),
        120,
        "one operator pod again",
    )


def test_the_standby_takes_over_a_burst_when_the_active_operator_is_killed(
    kube_env, core, apps, custom, operator, namespace
):
    began = time.monotonic()
    pods = two_operators(kube_env, core)
    upgraded_s = time.monotonic() - began
    try:
        url = tracker(core, apps, namespace)  # db 0: the broker; db 1: the runs
        track = redis.Redis.from_url(via_cluster_ip(core, namespace, url.replace("/0", "/1")))
        put_secret(core, namespace, "broker", url)
        body = taskqueue(
            "failover",
            external("broker"),
            track_url=f"redis://{TRACKER}.{namespace}.svc:6379/1",
            scaling={
                "minReplicas": 0,
                "maxReplicas": MAX_REPLICAS,
                "pollSeconds": 2,
                "maxScaleUpStep": 1,  # one pod per poll: still rising when the kill comes
                "scaleDownStabilizationSeconds": 300,  # the hold the new leader must keep
                "scaleToZeroIdleSeconds": 300,
                "initialTaskSeconds": TASK_S,
            },
            worker={"concurrency": 2},
        )
        with StatusLog(custom, namespace, "failover") as log:
            create_tq(custom, namespace, body)
            wait_for(
                lambda: (
                    condition(read_tq(custom, namespace, "failover"), "BrokerReady").get("status")
                    == "True"
                ),
                60,
                "the broker reachable",
            )
            active = fence.writer_pod(fence.written_by(read_tq(custom, namespace, "failover")))
            assert active in pods, f"the status names an operator pod: {active}"
            (standby,) = [pod for pod in pods if pod != active]

            enqueue(via_cluster_ip(core, namespace, url), BURST, TASK_S)
            sent = time.time()

            def measured() -> int | None:
                """Replicas, once the old leader has measured mu and pod start-up: the
                state its successor must not lose."""
                status = read_tq(custom, namespace, "failover").get("status") or {}
                mu = (status.get("policyState") or {}).get("serviceRateSmoothed")
                n = replicas(apps, namespace, "failover")
                return n if mu and status.get("podStartupSeconds") and n >= 2 else None

            at_kill = wait_for(measured, 60, "the burst scaling up, mu and start-up measured")
            sigkill_operator(kube_env, core, active)
            killed_at = time.time()
            assert at_kill < MAX_REPLICAS, "killed mid-burst, with replicas still to add"

            taken = wait_for(
                lambda: next(
                    (v for v in log.written() if fence.writer_pod(v.writer) != active), None
                ),
                45,
                "a status written by another operator after the kill",
            )
            takeover_s = taken.at - killed_at
            wait_for(
                lambda: replicas(apps, namespace, "failover") > at_kill,
                60,
                "replicas rising again after the takeover",
            )
            wait_for(lambda: track.hlen(RUNS) == BURST, 90, f"all {BURST} tasks run")
            burst_s = time.time() - sent
            written = log.written()

        assert fence.writer_pod(taken.writer) == standby, "the standby took over, not the restart"
        assert takeover_s < TAKEOVER_TARGET_S, f"takeover took {takeover_s:.1f}s"

        # One active operator at a time: the writers' processes form two runs, the old
        # leader's then the new one's, and never interleave.
        runs = [written[0].incarnation]
        for version in written[1:]:
            if version.incarnation != runs[-1]:
                runs.append(version.incarnation)
        assert len(runs) == 2 and fence.writer_pod(runs[0]) == active, runs
        before = [v for v in written if v.incarnation == runs[0]]
        assert all(v.at <= taken.at for v in before)

        # The new leader's first decision carried on from the old one's persisted state.
        last, first = before[-1].status, taken.status
        assert first["lastScaleTime"] >= last["lastScaleTime"], "last scale time kept"
        assert first["desiredReplicas"] >= last["desiredReplicas"], "no reset to fewer pods"
        mu_old = last["policyState"]["serviceRateSmoothed"]
        mu_new = first["policyState"].get("serviceRateSmoothed")
        assert mu_new is not None and 0.5 * mu_old <= mu_new <= 1.5 * mu_old, (
            f"measured mu {mu_old} -> {mu_new}: the new leader started from scratch"
        )
        startup_old, startup_new = last["podStartupSeconds"], first.get("podStartupSeconds")
        assert startup_new is not None and startup_old / 2 <= startup_new <= startup_old * 2, (
            f"pod start-up {startup_old}s -> {startup_new}s: the new leader started from scratch"
        )
        print(
            f"\nfailover: SIGKILL at {at_kill} replicas; {standby} wrote {takeover_s:.1f}s later;"
            f" mu {mu_old} -> {mu_new}, pod start-up {startup_old}s -> {startup_new}s,"
            f" desired {last['desiredReplicas']} -> {first['desiredReplicas']};"
            f" {len(written)} status writes by {len(runs)} operators; phases: chart to 2 replicas"
            f" {upgraded_s:.0f}s, send to kill {killed_at - sent:.0f}s, the burst {burst_s:.0f}s"
        )
        # Up to and including the new leader's first decision, replicas only rose: the
        # takeover did not start from a blank state that could drop pods the burst needs.
        counts = [v.status["replicas"] for v in written[: written.index(taken) + 1]]
        assert counts == sorted(counts), f"replicas fell across the takeover: {counts}"
        assert all(int(n) == 1 for n in track.hgetall(RUNS).values()), "a task ran twice"
    finally:
        restoring = time.monotonic()
        one_operator(kube_env, core)
        print(f"failover: back to one operator in {time.monotonic() - restoring:.0f}s")
