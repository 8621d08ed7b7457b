"""RabbitMQ failure modes: a broker restart mid-run, and a task outliving consumer_timeout."""

from __future__ import annotations

import json

import pytest
from ebbtide.stats import read_stats
from worker_testkit import run_cli, wait_for, worker

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def app(rabbitmq_broker):
    return rabbitmq_broker.tasks


@pytest.fixture
def rec(rabbitmq_broker):
    return rabbitmq_broker.rec


@pytest.fixture
def server(rabbitmq):
    if "server" not in rabbitmq:
        pytest.skip("needs the test's own rabbitmq-server (EBBTIDE_TEST_RABBITMQ reuses one)")
    return rabbitmq["server"]


def test_broker_restart_mid_run_loses_no_confirmed_task(app, rabbitmq_url, redis_db, rec, server):
    confirmed: list[int] = []

    def send(i: int) -> None:
        app.record.send("restart", i)  # returns only once RabbitMQ confirmed it
        confirmed.append(i)

    with worker(rabbitmq_url, "--concurrency", "4", record_url=redis_db) as proc:
        for i in range(100):
            send(i)
        wait_for(lambda: rec.llen("done:restart") >= 20, what="the worker to get going")
        server.restart()
        for i in range(100, 200):
            wait_for(lambda i=i: _try(send, i), what=f"send {i} after the restart")
        wait_for(
            lambda: set(map(int, rec.hkeys("runs:restart"))) >= set(confirmed),
            timeout=120,
            what="every confirmed task to run at least once",
        )
        assert proc.poll() is None  # the worker reconnected instead of dying
    assert len(confirmed) == 200


def _try(send, i: int) -> bool:
    try:
        send(i)
    except ConnectionError:
        return False
    return True


def test_task_longer_than_consumer_timeout_ends_in_the_dlq_with_the_fix(
    app, rabbitmq_url, redis_db, rec, server
):
    """RabbitMQ 3.10 closes the channel of a delivery unacked past consumer_timeout and
    requeues it. The worker logs the setting to change; the redelivery moves the task to
    the lost lane, where each loss of it held alone counts, and past max_redeliveries it
    goes to the DLQ instead of looping silently."""
    set_timeout = "application:set_env(rabbit, consumer_timeout, {}).".format
    assert server.ctl("eval", set_timeout(1500)).returncode == 0
    try:
        task_id = app.slow.send("long", 1, 4.0)
        url = rabbitmq_url + "&max_redeliveries=1"
        with worker(url, "--concurrency", "2", record_url=redis_db) as proc:
            wait_for(
                lambda: read_stats(rabbitmq_url, ["default"]).queues["default"].dead == 1,
                timeout=90,
                what="the task in the DLQ",
            )
            proc.terminate()
            proc.wait(60)
            log = proc.log()
    finally:
        server.ctl("eval", set_timeout(1_800_000))
    assert "consumer_timeout" in log and "rabbitmq.conf" in log
    listed = run_cli(rabbitmq_url, "dlq", "list", "--json")
    dead = json.loads(listed.stdout)
    assert [d["id"] for d in dead] == [task_id]
    assert "consumer_timeout" in dead[0]["error"]
    # ran; then alone from the lost lane, lost once (counted: 1), ran again, lost again
    # (2 > max_redeliveries), dead-lettered without a fourth run
    assert int(rec.hget("runs:long", "1")) == 3
