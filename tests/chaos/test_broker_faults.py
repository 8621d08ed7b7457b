"""Faults of the broker and of the link to it: a restart, a blackhole, a memory alarm."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import chaos_tasks
import pytest
from ledger import wait_for, worker
from support.servers import free_port

N = 1000
LEASE_S = 30  # the worker's default lease


def test_broker_restart(broker, ledger, redis_url):
    """The broker stops cleanly and comes back on the same port with its data (Redis: AOF,
    fsync every second, as the managed Redis runs; RabbitMQ: durable queues, persistent
    messages). Workers reconnect; every task, ready or in flight, is still there."""
    ledger.scenario = f"broker restart ({broker.name})"
    ledger.send(chaos_tasks.flaky, N // 2)  # the retry path too: a write per failure
    ledger.send(chaos_tasks.work, N // 2, 0.04)
    with worker(broker.url, redis_url, "--concurrency", "4"):
        wait_for(lambda: len(ledger.runs()) >= N // 10, 60, "a tenth of the tasks run")
        assert len(ledger.runs()) < N // 2, "the restart must hit mid-run"
        broker.server.restart()
        back = time.monotonic()
        row = ledger.check(broker.url, since=back)
    assert row.completed == N


def test_blackholed_link(proxied_broker, ledger, redis_url):
    """The link to the broker silently drops everything (no RST, no FIN) while the worker
    holds tasks. The worker notices within its lease (`/readyz` fails, so Kubernetes
    would stop routing to it and restart it if it stays wedged); when the link heals it
    finds its way back and nothing is lost."""
    broker = proxied_broker
    ledger.scenario = f"blackholed link ({broker.name})"
    ledger.send(chaos_tasks.work, N, 0.005)
    port = free_port()
    with worker(broker.url, redis_url, "--concurrency", "8", metrics_port=port):
        wait_for(lambda: len(ledger.runs()) >= N // 10, 60, "a tenth of the tasks run")
        assert probe(port, "/readyz") == 200
        broker.toxiproxy.blackhole(broker.proxy)
        cut = time.monotonic()
        wait_for(
            lambda: probe(port, "/readyz") == 503, LEASE_S, "/readyz to fail behind the blackhole"
        )
        detected = time.monotonic() - cut
        broker.toxiproxy.heal(broker.proxy)
        healed = time.monotonic()
        wait_for(lambda: probe(port, "/readyz") == 200, 60, "/readyz to pass once healed")
        row = ledger.check(broker.url, since=healed)
    assert detected < LEASE_S, f"the blackhole was noticed after {detected:.1f}s, past the lease"
    assert row.completed == N


def probe(port: int, path: str) -> int:
    """The HTTP status of a worker probe (0 while it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


@pytest.mark.rabbitmq
def test_rabbitmq_memory_alarm(rabbitmq_broker, chaos_rabbitmq, ledger, redis_url):
    """RabbitMQ's memory alarm blocks every connection that publishes. Tasks that only
    need an ack must keep completing through it (acks cannot wait for the alarm: the
    broker would then never free the memory) while a retry's publish is held back by it,
    retries resume when it clears, and nothing is lost."""
    broker = rabbitmq_broker
    ledger.scenario = "memory alarm (rabbitmq)"
    # A few retrying tasks spread through the backlog, fewer than the worker's window
    # (8), so some reach the worker while the alarm holds their retry's publish back.
    for _ in range(3):
        ledger.send(chaos_tasks.work, N // 4, 0.02)  # each needs only an ack
        ledger.send(chaos_tasks.flaky, 1)  # needs a publish (its retry)
    ledger.send(chaos_tasks.work, N // 4, 0.02)
    flaky = {i for i in ledger.ids.values() if i % (N // 4 + 1) == N // 4}
    server = chaos_rabbitmq["server"]
    with worker(broker.url, redis_url, "--concurrency", "4"):
        wait_for(lambda: len(ledger.runs()) >= N // 20, 60, "the first tasks to run")
        raised = server.ctl("set_vm_memory_high_watermark", "0.000001")
        assert raised.returncode == 0, raised.stderr
        try:
            wait_for(lambda: memory_alarm(server), 30, "the memory alarm to be raised")
            held_back = wait_for(
                lambda: retry_held_back(ledger, flaky), 90, "a retry to wait for the alarm"
            )
            # Runs, not the management API's ack count (it lags by its sampling): RabbitMQ
            # delivers more only as acks free the window, so 150 more runs than when the
            # retry was held back (the window holds ~18 at this rate) prove acks went on.
            ran = len(ledger.runs())
            wait_for(
                lambda: len(ledger.runs()) >= ran + 150,
                60,
                "acks to go on during the alarm while a retry is held back",
            )
            assert not set(ledger.runs()) & held_back, "a retry got through the alarm"
        finally:
            server.ctl("set_vm_memory_high_watermark", "0.4")
        cleared = time.monotonic()
        row = ledger.check(broker.url, since=cleared)
    assert row.completed == len(ledger.ids)


def retry_held_back(ledger, flaky: set[int]) -> set[int]:
    """The retrying tasks whose first attempt failed and whose retry has not run."""
    attempts = {int(k): int(v) for k, v in ledger.rec.hgetall(f"attempts:{ledger.tag}").items()}
    runs = ledger.runs()
    return {i for i in flaky if attempts.get(i, 0) >= 1 and i not in runs}


def memory_alarm(server) -> bool:
    alarms = server.ctl("eval", "rabbit_alarm:get_alarms().")
    return alarms.returncode == 0 and "memory" in alarms.stdout
