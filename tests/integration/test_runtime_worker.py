"""Real worker processes against a real Redis: delivery, recovery, retries, priorities,
timeouts, shutdown, rate limits and bad input. Conditions are polled, never slept on."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import redis

sys.path.insert(0, str(Path(__file__).parent))

import runtime_tasks as rt  # noqa: E402
from ebbtide.stats import read_stats  # noqa: E402
from runtime_tasks import run_cli, wait_for, worker  # noqa: E402
from support import http  # noqa: E402
from support.servers import free_port  # noqa: E402

pytestmark = pytest.mark.redis


@pytest.fixture
def r(redis_db, monkeypatch):
    monkeypatch.setenv("EBBTIDE_BROKER_URL", redis_db)
    rt.app.use_broker_url(redis_db)
    rt._client = None
    client = redis.Redis.from_url(redis_db, decode_responses=True)
    yield client
    client.close()
    rt.app.close()


def done(r, tag):
    return r.lrange(f"done:{tag}", 0, -1)


def test_tasks_run_and_stats_show_the_worker(r, redis_db):
    rt.record.send_many(("basic", i) for i in range(300))
    rt.arecord.send_many(("abasic", i) for i in range(100))
    with worker(redis_db, "--concurrency", "4", env={"POD_NAME": "pod-7"}) as proc:
        wait_for(lambda: len(done(r, "basic")) == 300 and len(done(r, "abasic")) == 100)
        stats = wait_for(lambda: (s := read_stats(redis_db)).workers and s, what="heartbeat")
        assert stats.workers[0].pod == "pod-7"
        assert stats.workers[0].concurrency == 4
        q = wait_for(
            lambda: (q := read_stats(redis_db).queues["default"]).completed_total == 400 and q
        )
        assert (q.ready, q.in_flight, q.enqueued_total) == (0, 0, 400)
        assert q.busy_seconds_total > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert read_stats(redis_db).workers == ()


def test_sigkill_mid_task_reruns_elsewhere_and_loses_nothing(r, redis_db):
    n = 2000
    rt.slow.send("kill", -1, 30.0)  # first in line: surely running when the worker dies
    rt.record.send_many(("kill", i) for i in range(n))
    with worker(redis_db, "--concurrency", "4") as first:
        wait_for(lambda: r.lrange("started:kill", 0, -1), what="slow task to start")
        wait_for(lambda: len(done(r, "kill")) > 50)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    r.delete("started:kill")
    rt.slow.send("kill2", -2, 0.0)
    with worker(redis_db, "--concurrency", "8") as second:
        wait_for(lambda: r.lrange("started:kill", 0, -1), what="killed task to run again")
        # The slow task sleeps 30 s; the rest must all be done meanwhile.
        wait_for(lambda: {int(x) for x in done(r, "kill")} >= set(range(n)), what="all tasks")
        second.kill()
    runs = r.hgetall("runs:kill")
    assert runs["-1"] == "2"  # at-least-once: the killed task ran again
    assert all(int(runs[str(i)]) >= 1 for i in range(n))


def test_long_task_keeps_its_lease(r, redis_db):
    rt.slow.send("long", 1, 5.0)  # 2.5x the 2 s lease: the heartbeat must renew it
    with worker(redis_db, "--concurrency", "1"), worker(redis_db, "--concurrency", "1"):
        wait_for(lambda: done(r, "long"))
        wait_for(lambda: read_stats(redis_db).queues["default"].completed_total == 1)
    assert r.hget("runs:long", "1") == "1"


def test_retries_then_dlq_then_replay(r, redis_db):
    rt.flaky.send("flaky", 2)
    rt.always_fails.send("doomed")
    with worker(redis_db) as proc:
        wait_for(lambda: done(r, "flaky"))
        assert r.hget("attempts", "flaky") == "3"
        wait_for(lambda: read_stats(redis_db).queues["default"].dead == 1)
        assert r.hget("attempts", "doomed") == "3"  # 1 run + max_retries=2
        listed = json.loads(run_cli(redis_db, "dlq", "list", "--json").stdout)
        assert len(listed) == 1 and listed[0]["task"] == "always_fails"
        assert "RuntimeError: doomed always fails" in listed[0]["error"]
        assert "Traceback" in listed[0]["traceback"]
        table = run_cli(redis_db, "dlq", "list").stdout
        assert "always_fails" in table
        out = run_cli(redis_db, "dlq", "replay")
        assert "replayed 1" in out.stdout, out.stderr
        wait_for(lambda: r.hget("attempts", "doomed") == "6", what="replayed retries")
        wait_for(lambda: read_stats(redis_db).queues["default"].dead == 1)
        assert "purged 1" in run_cli(redis_db, "dlq", "purge").stdout
        assert read_stats(redis_db).queues["default"].dead == 0
        proc.terminate()
        assert proc.wait(30) == 0


def test_delayed_task_runs_after_its_delay(r, redis_db):
    rt.record.options(delay=1.0).send("later", 1)
    assert read_stats(redis_db).queues["default"].delayed == 1
    with worker(redis_db):
        wait_for(lambda: done(r, "later"))


def test_strict_queue_priority(r, redis_db):
    rt.record.options(queue="low").send_many(("strict", 1000 + i) for i in range(20))
    rt.record.options(queue="high").send_many(("strict", i) for i in range(20))
    args = ["--queues", "high,low", "--strict", "--concurrency", "1", "--prefetch", "0"]
    with worker(redis_db, *args):
        wait_for(lambda: len(done(r, "strict")) == 40)
    order = [int(x) for x in done(r, "strict")]
    assert order == list(range(20)) + [1000 + i for i in range(20)]


def test_priority_levels_within_a_queue(r, redis_db):
    for p in (0, 3, 9, 5):
        rt.record.options(priority=p).send_many(("levels", p * 100 + i) for i in range(5))
    with worker(redis_db, "--concurrency", "1", "--prefetch", "0"):
        wait_for(lambda: len(done(r, "levels")) == 20)
    order = [int(x) // 100 for x in done(r, "levels")]
    assert order == sorted(order, reverse=True)


def test_weighted_queues_share_by_weight(r, redis_db):
    rt.record.options(queue="a").send_many(("w", i) for i in range(300))
    rt.record.options(queue="b").send_many(("w", 1000 + i) for i in range(300))
    with worker(redis_db, "--queues", "a:3,b:1", "--concurrency", "1", "--prefetch", "0"):
        wait_for(lambda: len(done(r, "w")) >= 200)
    first = [int(x) for x in done(r, "w")[:200]]
    share_a = sum(1 for x in first if x < 1000) / len(first)
    assert 0.6 < share_a < 0.9  # expected 0.75; both queues are served
    assert share_a < 1.0


def test_async_timeout_cancels_and_worker_keeps_going(r, redis_db):
    rt.async_timeout.send("at")
    rt.record.send("after-timeout", 1)
    with worker(redis_db, "--concurrency", "2") as proc:
        wait_for(lambda: read_stats(redis_db).queues["default"].dead == 1)
        wait_for(lambda: done(r, "after-timeout"))
        assert proc.poll() is None
    dead = json.loads(run_cli(redis_db, "dlq", "list", "--json").stdout)
    assert "TaskTimeout" in dead[0]["error"]


def test_sync_hard_timeout_hands_back_work_and_exits_nonzero(r, redis_db):
    rt.sync_timeout.send("st")
    rt.slow.send_many(("held", i, 60.0) for i in range(3))
    with worker(redis_db, "--concurrency", "2", "--prefetch", "2", "--lease-seconds", "60") as proc:
        assert proc.wait(60) == 3
    q = read_stats(redis_db).queues["default"]
    assert q.dead == 1  # the overrunning task is recorded, not retried forever
    assert q.in_flight == 0 and q.ready == 3  # the rest handed back at once, no lease wait
    dead = json.loads(run_cli(redis_db, "dlq", "list", "--json").stdout)
    assert "hard timeout" in dead[0]["error"]


def test_sigterm_finishes_running_and_hands_back_the_rest(r, redis_db):
    rt.slow.send_many(("term", i, 3.0) for i in range(10))
    with worker(redis_db, "--concurrency", "2", "--prefetch", "4", "--lease-seconds", "60") as proc:
        wait_for(lambda: len(r.lrange("started:term", 0, -1)) == 2)
        wait_for(lambda: read_stats(redis_db).queues["default"].in_flight == 6)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    q = read_stats(redis_db).queues["default"]
    assert len(done(r, "term")) == 2
    assert (q.in_flight, q.ready, q.completed_total) == (0, 8, 2)


def test_sigterm_after_grace_requeues_running_tasks(r, redis_db):
    rt.slow.send_many(("grace", i, 60.0) for i in range(2))
    args = ["--concurrency", "2", "--grace-seconds", "0.5", "--lease-seconds", "60"]
    with worker(redis_db, *args) as proc:
        wait_for(lambda: len(r.lrange("started:grace", 0, -1)) == 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    q = read_stats(redis_db).queues["default"]
    assert (q.in_flight, q.ready) == (0, 2)


def test_unique_key_released_after_completion(r, redis_db):
    first = rt.record.options(key="k1").send("uniq", 1)
    assert rt.record.options(key="k1").send("uniq", 2) == first
    with worker(redis_db):
        wait_for(lambda: done(r, "uniq"))
        wait_for(lambda: not r.exists("ebbtide:q:default:uniq:k1"))
        assert rt.record.options(key="k1").send("uniq", 3) != first
        wait_for(lambda: len(done(r, "uniq")) == 2)
    assert done(r, "uniq") == ["1", "3"]


def test_rate_limit_holds_across_workers(r, redis_db):
    rt.limited.send_many(("rate", i) for i in range(12))
    with worker(redis_db, "--concurrency", "4"), worker(redis_db, "--concurrency", "4"):
        wait_for(lambda: len(done(r, "rate")) == 12)
    stamps = sorted(float(x) for x in done(r, "rate"))
    # 4 per 1 s window: 12 tasks need 3 windows, so they cannot all run at once (unlimited,
    # 8 slots finish 12 such tasks within milliseconds).
    assert stamps[-1] - stamps[0] > 0.5


def test_bad_input_goes_to_the_dlq_with_the_reason(r, redis_db):
    rt.record.send("ok-before", 1)  # registers the queue
    now_ms = int(float(r.time()[0]) * 1000)
    r.hset("ebbtide:q:default:msgs", "garbage", "{not json")
    r.rpush("ebbtide:q:default:ready:0", f"{now_ms}|0|garbage")
    r.hset(
        "ebbtide:q:default:msgs", "ghost", json.dumps({"id": "ghost", "task": "nope", "args": []})
    )
    r.rpush("ebbtide:q:default:ready:0", f"{now_ms}|0|ghost")
    r.rpush("ebbtide:q:default:ready:0", "no-pipes-here")
    rt.record.send("ok-after", 1)
    with worker(redis_db) as proc:
        wait_for(lambda: done(r, "ok-after") and done(r, "ok-before"))
        wait_for(lambda: read_stats(redis_db).queues["default"].dead == 3)
        assert proc.poll() is None
    errors = sorted(
        d["error"] for d in json.loads(run_cli(redis_db, "dlq", "list", "--json").stdout)
    )
    assert errors[0] == "malformed queue entry"
    assert "undecodable payload" in errors[1]
    assert "unknown task name 'nope'" in errors[2]


def test_metrics_and_probes(r, redis_db):
    port = free_port()
    rt.record.send_many(("m", i) for i in range(5))
    with worker(redis_db, "--metrics-port", str(port), "--metrics-host", "127.0.0.1"):
        wait_for(lambda: len(done(r, "m")) == 5)

        def get(path):
            return http.get(port, path)

        wait_for(lambda: get("/readyz") == (200, "ready\n"), what="readiness")
        assert get("/healthz")[0] == 200
        body = wait_for(
            lambda: (
                (g := get("/metrics"))
                and 'ebbtide_tasks_total{outcome="success",task="record"} 5.0' in g[1]
                and g[1]
            )
        )
        for name in (
            "ebbtide_task_duration_seconds_bucket",
            "ebbtide_in_flight 0.0",
            "ebbtide_enqueue_to_start_seconds_bucket",
        ):
            assert name in body


def test_stats_cli(r, redis_db):
    rt.record.options(queue="cli", priority=2).send("s", 1)
    table = run_cli(redis_db, "stats")
    assert table.returncode == 0 and "cli" in table.stdout and "2:1" in table.stdout
    data = json.loads(run_cli(redis_db, "stats", "--json", "--queues", "cli").stdout)
    assert data["queues"]["cli"]["ready"] == 1


def test_cli_reports_bad_app_clearly(redis_db):
    out = run_cli(redis_db, "worker", "no_such_module:app")
    assert out.returncode == 2 and "no_such_module" in out.stderr
    env_less = {k: v for k, v in os.environ.items() if k != "EBBTIDE_BROKER_URL"}
    assert env_less  # a worker with an unknown scheme exits with a clear message
    out = run_cli("ftp://x", "stats")
    assert out.returncode == 2 and "unsupported broker URL scheme 'ftp'" in out.stderr
