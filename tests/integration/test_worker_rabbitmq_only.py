"""Worker behaviour that is RabbitMQ's alone: the prefetch window that grows with the
measured rate, batched `multiple` acks, an explicit `--prefetch` that pins the window, and
a SIGTERM that hands back a grown window at once (docs/rabbitmq.md, "Performance"). The
shared behaviours: test_worker.py; broker restart and consumer_timeout:
test_rabbitmq_resilience.py."""

from __future__ import annotations

import re
import signal
import time
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from support.rabbitmq_admin import _request
from worker_testkit import wait_for

pytestmark = pytest.mark.rabbitmq


def consumers(rabbitmq_url: str, queue: str = "ebbtide.default") -> list[int]:
    """The prefetch_count of each consumer on `queue`, from the management API."""
    parts = urlsplit(rabbitmq_url)
    port = parse_qs(parts.query)["management_port"][0]
    listed = _request(
        f"http://guest:guest@127.0.0.1:{port}", "GET", f"/api/consumers/{quote(parts.path[1:])}"
    )
    return sorted(c["prefetch_count"] for c in listed if c["queue"]["name"] == queue)


def test_many_fast_tasks_grow_the_window_batch_acks_and_run_exactly_once(rabbitmq_broker):
    """Out-of-order completions on 8 threads, acked with `multiple` frames: a wrong
    frame (a double ack, an unknown tag) would close the channel and redeliver."""
    b = rabbitmq_broker
    n = 5000
    b.tasks.record.send_many([("fast", i) for i in range(n)])
    windows: list[int] = []
    with b.worker("--concurrency", "8", "--log-level", "DEBUG") as proc:
        deadline = time.monotonic() + 120
        while b.rec.llen("done:fast") < n:  # sampling the window, not synchronising
            windows.append(sum(consumers(b.url)))
            assert proc.poll() is None
            assert time.monotonic() < deadline, f"{b.rec.llen('done:fast')} of {n} done in 120 s"
            time.sleep(0.05)
        # Drained: back to the fixed window (concurrency + prefetch) within ~1 s.
        wait_for(lambda: consumers(b.url) == [16], what="the window back at 16")
        # Counted while the worker's channel is open: the count of a closed channel can
        # miss its last acks (docs/rabbitmq.md, "Statistics").
        wait_for(lambda: b.queue().completed_total == n, what="every ack counted by RabbitMQ")
        proc.terminate()
        assert proc.wait(60) == 0
        log = proc.log()
    # The run takes about a second, and the management API's consumer listing can lag
    # all of it, so the growth itself is read from the worker's log of every resize.
    resized = [int(w) for w in re.findall(r'"prefetch window" queue=default window=(\d+)', log)]
    assert resized and max(resized) > 16, (windows, log)  # grew while tasks were fast ...
    assert max(windows + resized) <= 16 + 256  # ... within its cap
    assert len(b.rec.hgetall("runs:fast")) == n
    assert set(b.rec.hvals("runs:fast")) == {"1"}  # each ran exactly once
    assert "connection lost" not in log and "redelivered" not in log, log
    # Read by inbound.py, not pika's per-frame path (pika's internals still fit it).
    decoded = re.findall(r'"deliveries read in one pass" n=(\d+)', log)
    assert decoded and int(decoded[-1]) >= n, log[-2000:]
    # The management API samples each figure on its own, so the ack count may be current
    # while the unacked count is not yet: wait for them to agree (the worker has exited,
    # so anything it had left unacked would now be ready again, and never acked).
    q = wait_for(
        lambda: (q := b.queue()).completed_total == n and (q.ready, q.in_flight) == (0, 0) and q,
        what="the acks still counted, nothing ready or unacked",
    )
    assert (q.ready, q.in_flight) == (0, 0)


def test_an_explicit_prefetch_keeps_the_window_fixed(rabbitmq_broker):
    b = rabbitmq_broker
    b.tasks.record.send_many([("fixed", i) for i in range(2000)])
    seen: set[tuple[int, ...]] = set()
    with b.worker("--concurrency", "2", "--prefetch", "1"):
        deadline = time.monotonic() + 120
        while b.rec.llen("done:fixed") < 2000:  # sampling the window, not synchronising
            seen.add(tuple(consumers(b.url)))
            assert time.monotonic() < deadline, f"{b.rec.llen('done:fixed')} of 2000 in 120 s"
            time.sleep(0.05)
    # one consumer, prefetch = concurrency + prefetch, seen at least once, never another
    assert (3,) in seen and seen <= {(), (3,)}, seen


def test_sigterm_hands_back_a_grown_window_at_once(rabbitmq_broker):
    """Fast tasks grow the window, so the worker holds the slow ones queued behind them;
    on SIGTERM every unstarted one goes back at once, not when the running ones end."""
    b = rabbitmq_broker
    b.tasks.record.send_many([("warm", i) for i in range(3000)])
    b.tasks.gated.send_many([("held", i) for i in range(12)])  # run until the gate opens
    with b.worker("--concurrency", "2", "--grace-seconds", "20") as first:
        wait_for(lambda: len(b.started("held")) == 2, what="two gated tasks running")
        first.send_signal(signal.SIGTERM)
        with b.worker("--concurrency", "12"):
            wait_for(lambda: len(b.started("held")) == 12, what="the other ten to start elsewhere")
            assert first.poll() is None  # the first worker is still finishing its two
            b.open_gate("held")
            assert first.wait(60) == 0, first.log()
            wait_for(lambda: len(b.done("held")) == 12, what="all twelve done")
    assert set(b.rec.hvals("runs:held")) == {"1"}  # none ran twice, none was cut short
