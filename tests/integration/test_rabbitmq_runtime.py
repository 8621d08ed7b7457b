"""The worker runtime on a real RabbitMQ: enqueue/consume/ack, retries, DLQ, delays,
priorities, SIGTERM and statistics. Effects are recorded in a real Redis."""

from __future__ import annotations

import json
import signal
import time

import ebbtide
import pytest
import redis
from ebbtide.stats import read_stats
from rabbitmq_testkit import cli, load_tasks, recorder, wait_for, worker
from support import http
from support.servers import free_port

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def rec(redis_db) -> redis.Redis:
    return recorder(redis_db)


@pytest.fixture
def app(rabbitmq_url):
    tasks = load_tasks(rabbitmq_url)
    yield tasks
    tasks.app.close()


def test_send_consume_ack_and_stats(app, rabbitmq_url, redis_db, rec):
    ids = [app.record.options(queue="work").send("basic", i) for i in range(40)]
    ids += app.record.options(queue="work").send_many([("basic", i) for i in range(40, 60)])
    assert len(set(ids)) == 60
    stats = wait_for(
        lambda: (
            (s := read_stats(rabbitmq_url, ["work"])).queues["work"].ready == 60
            and s.queues["work"].oldest_ready_at is not None
            and s
        ),
        what="60 ready and the head's timestamp in the management stats",
    )
    q = stats.queues["work"]
    assert q.in_flight == 0 and q.completed_total == 0 and q.enqueued_total == 60
    assert q.oldest_ready_at is not None and stats.oldest_age_s("work") < 60
    with worker(rabbitmq_url, redis_db, "--queues", "work", "--concurrency", "4"):
        wait_for(lambda: rec.llen("done:basic") >= 60, what="60 tasks done")
        stats = wait_for(
            lambda: (s := read_stats(rabbitmq_url)).workers and s, what="a live worker"
        )
        assert stats.workers[0].concurrency == 4 and stats.workers[0].queues == ("work",)
        stats = wait_for(
            lambda: (s := read_stats(rabbitmq_url)).queues["work"].completed_total == 60 and s,
            what="60 acks in the stats",
        )
        q = stats.queues["work"]
        assert (q.ready, q.in_flight, q.enqueued_total) == (0, 0, 60)
        wait_for(
            lambda: read_stats(rabbitmq_url).queues["work"].busy_seconds_total > 0,
            what="busy seconds from the heartbeat",
        )
    assert sorted(int(i) for i in rec.lrange("done:basic", 0, -1)) == list(range(60))


def test_retries_then_dlq_list_replay_purge(app, rabbitmq_url, redis_db, rec):
    app.flaky.send("flaky", 2)
    dead_id = app.always_fails.send("doomed")
    with worker(rabbitmq_url, redis_db, "--concurrency", "2"):
        wait_for(lambda: rec.llen("done:flaky") == 1, what="flaky to succeed on its 3rd try")
        assert rec.lrange("done:flaky", 0, -1) == ["3"]
        wait_for(
            lambda: read_stats(rabbitmq_url, ["default"]).queues["default"].dead == 1,
            what="the doomed task in the DLQ",
        )
    assert rec.hget("attempts", "doomed") == "3"  # first try + max_retries=2
    listed = cli(rabbitmq_url, "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    dead = json.loads(listed.stdout)
    assert [d["id"] for d in dead] == [dead_id]
    assert "RuntimeError: doomed always fails" in dead[0]["error"]
    assert dead[0]["queue"] == "default" and dead[0]["attempt"] == 3
    replayed = cli(rabbitmq_url, "dlq", "replay", "--id", dead_id)
    assert replayed.returncode == 0 and "replayed 1" in replayed.stdout, replayed.stderr
    with worker(rabbitmq_url, redis_db):
        wait_for(lambda: rec.hget("attempts", "doomed") == "6", what="the replayed task to rerun")
        wait_for(
            lambda: len(json.loads(cli(rabbitmq_url, "dlq", "list", "--json").stdout)) == 1,
            what="it to die again",
        )
    purged = cli(rabbitmq_url, "dlq", "purge")
    assert purged.returncode == 0 and "purged 1" in purged.stdout, purged.stderr
    assert json.loads(cli(rabbitmq_url, "dlq", "list", "--json").stdout) == []


def test_delayed_tasks_wait_in_a_delay_queue_not_in_the_worker(app, rabbitmq_url, redis_db, rec):
    import pika

    sent_at = time.time()
    app.stamp.options(delay=3).send("later", 1)
    app.stamp.send("now", 0)
    with pika.BlockingConnection(pika.URLParameters(rabbitmq_url.split("?")[0])) as conn:
        ok = conn.channel().queue_declare("ebbtide.default.delay.3000", passive=True)
        assert ok.method.message_count == 1  # parked in RabbitMQ, held by no worker
    with worker(rabbitmq_url, redis_db):
        wait_for(lambda: rec.llen("done:later") == 1, what="the delayed task to run")
        assert rec.llen("done:now") == 1
    ran_at = float(rec.lindex("done:later", 0).split("|")[1])
    assert ran_at - sent_at >= 3  # never early (a lower bound, not a timing race)


def test_priorities_within_a_queue(app, rabbitmq_url, redis_db, rec):
    app.record.send_many([("prio", i) for i in range(10)])  # priority 0
    app.record.options(priority=9).send_many([("prio", i) for i in range(10, 20)])
    with worker(rabbitmq_url, redis_db, "--concurrency", "1", "--prefetch", "0"):
        wait_for(lambda: rec.llen("done:prio") == 20, what="all 20 tasks")
    order = [int(i) for i in rec.lrange("done:prio", 0, -1)]
    assert sorted(order[:10]) == list(range(10, 20)), order


def test_sigterm_finishes_running_tasks_and_hands_back_the_rest(app, rabbitmq_url, redis_db, rec):
    app.slow.send_many([("term", i, 3.0) for i in range(6)])
    args = ("--concurrency", "2", "--grace-seconds", "20", "--lease-seconds", "1.5")
    with worker(rabbitmq_url, redis_db, *args) as proc:
        wait_for(lambda: rec.llen("started:term") == 2, what="two tasks started")
        busy = wait_for(  # heartbeats every 0.5 s: the live worker is seen busy
            lambda: [w for w in read_stats(rabbitmq_url).workers if w.running == 2],
            what="a busy worker running 2 tasks in the stats",
        )
        assert busy[0].busy and busy[0].concurrency == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, proc.stderr.read()
    done = rec.lrange("done:term", 0, -1)
    assert sorted(done) == sorted(rec.lrange("started:term", 0, -1))  # none cut short
    assert len(done) >= 2
    left = 6 - len(done)
    wait_for(
        lambda: (
            (q := read_stats(rabbitmq_url, ["default"]).queues["default"]).ready == left
            and q.in_flight == 0
        ),
        what="the unstarted tasks back in the queue, none held",
    )
    with worker(rabbitmq_url, redis_db, "--concurrency", "6"):
        wait_for(lambda: rec.llen("done:term") == 6, what="the rest done by the next worker")
    assert all(n == "1" for n in rec.hgetall("runs:term").values())  # each ran exactly once


def consumers(rabbitmq_url: str, queue: str = "ebbtide.default") -> list[int]:
    """The prefetch_count of each consumer on `queue`, from the management API."""
    from urllib.parse import parse_qs, quote, urlsplit

    from support.rabbitmq_admin import _request

    parts = urlsplit(rabbitmq_url)
    port = parse_qs(parts.query)["management_port"][0]
    listed = _request(
        f"http://guest:guest@127.0.0.1:{port}", "GET", f"/api/consumers/{quote(parts.path[1:])}"
    )
    return sorted(c["prefetch_count"] for c in listed if c["queue"]["name"] == queue)


def test_many_fast_tasks_grow_the_window_batch_acks_and_run_exactly_once(
    app, rabbitmq_url, redis_db, rec
):
    """Out-of-order completions on 8 threads, acked with `multiple` frames: a wrong
    frame (a double ack, an unknown tag) would close the channel and redeliver."""
    n = 5000
    app.record.send_many([("fast", i) for i in range(n)])
    windows: list[int] = []
    with worker(rabbitmq_url, redis_db, "--concurrency", "8") as proc:
        while rec.llen("done:fast") < n:
            windows.append(sum(consumers(rabbitmq_url)))
            assert proc.poll() is None
            time.sleep(0.05)
        # Drained: back to the fixed window (concurrency + prefetch) within ~1 s.
        wait_for(lambda: consumers(rabbitmq_url) == [16], what="the window back at 16")
        proc.terminate()
        assert proc.wait(60) == 0
        log = proc.stderr.read()
    assert max(windows) > 16, windows  # grew while tasks were fast ...
    assert max(windows) <= 16 + 256  # ... within its cap
    assert len(rec.hgetall("runs:fast")) == n
    assert set(rec.hvals("runs:fast")) == {"1"}  # each ran exactly once
    assert "connection lost" not in log and "redelivered" not in log, log
    q = wait_for(
        lambda: (
            (q := read_stats(rabbitmq_url, ["default"]).queues["default"]).completed_total == n
            and q
        ),
        what="every ack counted by RabbitMQ",
    )
    assert (q.ready, q.in_flight) == (0, 0)


def test_an_explicit_prefetch_keeps_the_window_fixed(app, rabbitmq_url, redis_db, rec):
    app.record.send_many([("fixed", i) for i in range(2000)])
    seen: set[tuple[int, ...]] = set()
    with worker(rabbitmq_url, redis_db, "--concurrency", "2", "--prefetch", "1"):
        while rec.llen("done:fixed") < 2000:
            seen.add(tuple(consumers(rabbitmq_url)))
            time.sleep(0.05)
    assert seen <= {(), (3,)}, seen  # one consumer, prefetch = concurrency + prefetch


def test_sigterm_hands_back_a_grown_window_at_once(app, rabbitmq_url, redis_db, rec):
    """Fast tasks grow the window, so the worker holds the slow ones queued behind them;
    on SIGTERM every unstarted one goes back at once, not when the running ones end."""
    app.record.send_many([("warm", i) for i in range(3000)])
    app.slow.send_many([("held", i, 5.0) for i in range(12)])
    args = ("--concurrency", "2", "--grace-seconds", "20")
    with worker(rabbitmq_url, redis_db, *args) as first:
        wait_for(lambda: rec.llen("started:held") == 2, what="two slow tasks running")
        first.send_signal(signal.SIGTERM)
        with worker(rabbitmq_url, redis_db, "--concurrency", "12"):
            wait_for(
                lambda: rec.llen("started:held") == 12 or first.poll() is not None,
                what="the other ten to start elsewhere",
            )
            assert first.poll() is None  # the first worker is still finishing its two
            assert rec.llen("started:held") == 12
            assert first.wait(60) == 0, first.stderr.read()
            wait_for(lambda: rec.llen("done:held") == 12, what="all twelve done")
    assert set(rec.hvals("runs:held")) == {"1"}  # none ran twice, none was cut short


def test_backlog_limit_unique_keys_and_unreachable_broker_are_clear_errors(app, rabbitmq_url):
    from ebbtide.errors import BacklogFull

    app.app.queue("small", max_backlog=3)
    try:
        with pytest.raises(BacklogFull) as full:
            app.record.options(queue="small").send_many([("full", i) for i in range(5)])
        assert full.value.accepted == 3
    finally:
        app.app.queues.pop("small", None)
    with pytest.raises(ValueError, match="key=.*redis://"):
        app.record.options(key="k").send("k", 1)
    down = ebbtide.App(broker_url="amqp://guest:guest@127.0.0.1:1/")

    @down.task(name="t")
    def t(): ...

    with pytest.raises(ConnectionError, match="127.0.0.1:1"):
        t.send()


def test_undecodable_and_unknown_tasks_go_to_the_dlq(app, rabbitmq_url, redis_db, rec):
    import pika

    with pika.BlockingConnection(pika.URLParameters(rabbitmq_url.split("?")[0])) as conn:
        channel = conn.channel()
        app.record.send("warm", 0)  # declares the queues
        channel.basic_publish("", "ebbtide.default", b"\xff not json")
        channel.basic_publish("", "ebbtide.default", b'{"task":"nope","args":[],"kwargs":{}}')
    with worker(rabbitmq_url, redis_db):
        wait_for(
            lambda: len(json.loads(cli(rabbitmq_url, "dlq", "list", "--json").stdout)) == 2,
            what="both poison messages in the DLQ",
        )
        assert rec.llen("done:warm") == 1
    errors = sorted(
        d["error"] for d in json.loads(cli(rabbitmq_url, "dlq", "list", "--json").stdout)
    )
    assert "undecodable" in errors[0] and "unknown task name 'nope'" in errors[1]


def test_sigkill_mid_task_reruns_elsewhere_and_loses_nothing(app, rabbitmq_url, redis_db, rec):
    """At-least-once across a SIGKILL: the broker requeues the dead worker's unacked
    deliveries (in flight and prefetched) when its connection drops, at once."""
    n = 1000
    app.slow.send("kill", -1, 30.0)  # first in line: surely running when the worker dies
    app.record.send_many([("kill", i) for i in range(n)])
    with worker(rabbitmq_url, redis_db, "--concurrency", "4") as first:
        wait_for(lambda: rec.lrange("started:kill", 0, -1), what="the slow task started")
        wait_for(lambda: rec.llen("done:kill") > 50, what="some tasks done")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    rec.delete("started:kill")
    with worker(rabbitmq_url, redis_db, "--concurrency", "8") as second:
        wait_for(lambda: rec.lrange("started:kill", 0, -1), what="the killed task to run again")
        # The slow task sleeps 30 s; all the others must be done meanwhile.
        wait_for(
            lambda: {int(x) for x in rec.lrange("done:kill", 0, -1)} >= set(range(n)),
            what="every task done",
        )
        second.kill()
    runs = rec.hgetall("runs:kill")
    assert runs["-1"] == "2"  # the killed task ran again
    assert all(int(runs[str(i)]) >= 1 for i in range(n))  # nothing lost


def test_async_timeout_cancels_and_worker_keeps_going(app, rabbitmq_url, redis_db, rec):
    app.async_timeout.send("at")
    app.record.send("after-timeout", 1)
    with worker(rabbitmq_url, redis_db, "--concurrency", "2") as proc:
        wait_for(lambda: rec.llen("done:after-timeout") == 1, what="the next task done")
        dead = wait_for(
            lambda: json.loads(cli(rabbitmq_url, "dlq", "list", "--json").stdout),
            what="the timed-out task in the DLQ",
        )
        assert proc.poll() is None, "a cancelled async task never stops the worker"
    assert "TaskTimeout" in dead[0]["error"]


def test_sync_hard_timeout_hands_back_work_and_exits_nonzero(app, rabbitmq_url, redis_db, rec):
    app.sync_timeout.send("st")
    app.slow.send_many([("held", i, 60.0) for i in range(3)])
    with worker(rabbitmq_url, redis_db, "--concurrency", "2", "--prefetch", "2") as proc:
        assert proc.wait(60) == 3  # a stuck thread cannot be killed: exit, the pod restarts
    dead = wait_for(
        lambda: json.loads(cli(rabbitmq_url, "dlq", "list", "--json").stdout),
        what="the overrunning task in the DLQ",
    )
    assert "hard timeout" in dead[0]["error"]
    wait_for(
        lambda: (
            (q := read_stats(rabbitmq_url, ["default"]).queues["default"]).ready == 3
            and q.in_flight == 0
        ),
        what="the held tasks back in the queue",
    )


def test_metrics_and_probes(app, rabbitmq_url, redis_db, rec):
    port = free_port()
    app.record.send_many([("m", i) for i in range(5)])
    args = ("--metrics-port", str(port), "--metrics-host", "127.0.0.1")
    with worker(rabbitmq_url, redis_db, *args):
        wait_for(lambda: rec.llen("done:m") == 5, what="5 tasks done")

        def get(path):
            return http.get(port, path)

        wait_for(lambda: get("/readyz") == (200, "ready\n"), what="readiness")
        assert get("/healthz")[0] == 200
        body = wait_for(
            lambda: (
                (g := get("/metrics"))
                and 'ebbtide_tasks_total{outcome="success",task="record"} 5.0' in g[1]
                and g[1]
            ),
            what="5 successes in the metrics",
        )
        for name in (
            "ebbtide_task_duration_seconds_bucket",
            "ebbtide_enqueue_to_start_seconds_bucket",
        ):
            assert name in body


def test_stats_cli(app, rabbitmq_url):
    app.record.options(queue="cli").send("s", 1)

    def listed() -> dict | None:
        data = json.loads(cli(rabbitmq_url, "stats", "--json", "--queues", "cli").stdout)
        return data if data["queues"]["cli"]["ready"] == 1 else None

    wait_for(listed, what="the task in `ebbtide stats --json` (management stats lag a little)")
    table = cli(rabbitmq_url, "stats")
    assert table.returncode == 0 and "cli" in table.stdout
