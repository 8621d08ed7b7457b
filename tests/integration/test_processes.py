"""`ebbtide worker --processes 2` on each broker: tasks run in two processes, a killed
process is restarted and its tasks recovered, SIGTERM drains both, and the supervisor's
port aggregates the children's metrics and readiness."""

from __future__ import annotations

import os
import re
import signal

import pytest
from support import http
from support.servers import free_port
from worker_testkit import wait_for

TWO = ("--processes", "2", "--concurrency", "2", "--prefetch", "0")  # 2 tasks per process


def pids(entries: list[str]) -> set[str]:
    return {e.split("|")[1] for e in entries}


def indices(entries: list[str]) -> set[int]:
    return {int(e.split("|")[0]) for e in entries}


def four_started(broker, tag: str) -> set[str]:
    broker.tasks.pid_gated.send_many((tag, i) for i in range(4))
    wait_for(lambda: len(broker.started(tag)) == 4, what=lambda: f"{broker.started(tag)}")
    running = pids(broker.started(tag))
    assert len(running) == 2, f"4 tasks at 2 slots per process ran in {running}"
    return running


def test_two_processes_run_tasks_and_the_supervisor_aggregates_them(broker):
    port = free_port()
    with broker.worker(*TWO, "--metrics-port", str(port), "--metrics-host", "127.0.0.1") as proc:
        four_started(broker, "p2")
        wait_for(lambda: http.get(port, "/readyz") == (200, "ready (2 processes)\n"), 30)
        assert http.get(port, "/healthz")[0] == 200
        # Each process heartbeats as a worker of its own: the operator counts 2 x 2 slots.
        workers = broker.shows(
            lambda: len(w := broker.stats().workers) == 2 and w, "two workers' heartbeats"
        )
        assert sum(w.concurrency for w in workers) == 4
        broker.open_gate("p2")
        wait_for(lambda: len(broker.done("p2")) == 4, what="4 tasks done")
        body = wait_for(
            lambda: (
                (g := http.get(port, "/metrics"))
                and 'ebbtide_worker_tasks_total{outcome="success",task="pid_gated"} 4.0' in g[1]
                # each child samples its gauges on its loop: 0 a moment after the last task
                and "ebbtide_worker_running_tasks 0.0" in g[1]
                and g[1]
            ),
            what="4 successes and 0 running, summed over both processes",
        )
        assert "ebbtide_worker_processes 2.0" in body
        # One build-info series for the pod (the supervisor's), none per child pid.
        assert body.count("ebbtide_build_info{") == 1 and 'pid="' not in body
        assert proc.poll() is None


def test_a_killed_process_is_restarted_and_its_tasks_recovered(broker):
    with broker.worker(*TWO) as proc:
        first = four_started(broker, "pk")
        victim = sorted(first)[0]
        os.kill(int(victim), signal.SIGKILL)
        wait_for(lambda: "worker process died, restarting" in proc.log(), 30, "the restart log")
        # Its tasks come back and run in the new process (the other one is full). On
        # RabbitMQ they come back through the lost lane, one at a time (rabbitmq/lost.py).
        wait_for(
            lambda: len(pids(broker.started("pk")) - first) == 1,
            what=lambda: f"a task started by a new process: {broker.started('pk')}",
        )
        # The first two were forked from the preloaded supervisor; the restart is exec'd.
        wait_for(lambda: "start=exec" in proc.log(), 30, "the restarted process's start")
        assert proc.log().count("start=forked") == 2
        broker.open_gate("pk")
        wait_for(
            lambda: indices(broker.done("pk")) == {0, 1, 2, 3},
            what=lambda: f"every task done: {broker.done('pk')}",
        )
        assert victim not in pids(broker.done("pk"))
        lost = {int(e.split("|")[0]) for e in broker.started("pk") if e.endswith(f"|{victim}")}
        assert all(broker.rec.hget("runs:pk", str(i)) == "2" for i in lost)  # run again
        assert proc.poll() is None


def test_sigterm_drains_both_processes(broker):
    with broker.worker(*TWO, "--grace-seconds", "30") as proc:
        four_started(broker, "pt")
        # No --metrics-port: nothing exports the children's metrics, so they write none.
        metrics_dir = re.search(r'metrics_dir="?([^"\s]+)', proc.log()).group(1)
        assert os.listdir(metrics_dir) == []
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "supervisor stopping" in proc.log(), 30, "the supervisor's stop")
        broker.open_gate("pt")  # the running tasks finish inside the grace period
        assert proc.wait(60) == 0
        assert indices(broker.done("pt")) == {0, 1, 2, 3}
        assert len(pids(broker.done("pt"))) == 2
        assert all(v == "1" for v in broker.rec.hgetall("runs:pt").values())  # none re-run


def test_children_exec_d_as_new_interpreters_run_tasks_too(broker):
    with broker.worker(*TWO, "--start-children", "exec") as proc:
        running = four_started(broker, "px")
        assert proc.log().count("start=exec") == 2 and "start=forked" not in proc.log()
        assert str(proc.pid) not in running
        broker.open_gate("px")
        wait_for(lambda: len(broker.done("px")) == 4, what="4 tasks done")


@pytest.mark.parametrize("start", ["fork", "exec"])
def test_a_bad_app_stops_the_supervisor_with_a_usage_error(broker, start):
    out = broker.cli("worker", "no_such_module:app", "--processes", "2", "--start-children", start)
    assert out.returncode == 2, out.stderr
    assert "no_such_module" in out.stderr and "usage error" in out.stderr


def allowed_cpus(pid: str) -> str:
    with open(f"/proc/{pid}/status") as status:
        return re.search(r"^Cpus_allowed_list:\s*(\S+)", status.read(), re.M).group(1)


def test_cpu_affinity_pins_each_process_to_its_own_cpu(broker):
    cpus = sorted(os.sched_getaffinity(0))
    listed = ",".join(map(str, cpus))
    with broker.worker(*TWO, "--cpu-affinity", listed) as proc:
        running = four_started(broker, "pa")
        # The task threads run where their process was pinned: one CPU each, in turn.
        pinned = {allowed_cpus(pid) for pid in running}
        assert pinned == {str(c) for c in cpus[:2]}, (pinned, cpus)
        assert proc.log().count('event="pinned to a CPU"') == 2
        broker.open_gate("pa")
        wait_for(lambda: len(broker.done("pa")) == 4, what="4 tasks done")


def test_a_cpu_the_pod_may_not_use_is_a_usage_error(broker):
    foreign = max(os.sched_getaffinity(0)) + 1
    out = broker.cli(
        "worker", "no_such_module:app", "--processes", "2", "--cpu-affinity", str(foreign)
    )
    assert out.returncode == 2, out.stderr
    assert f"CPU {foreign} is not one this process may run on" in out.stderr
