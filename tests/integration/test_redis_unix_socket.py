"""A Redis reached over a unix socket (`unix://`): the producer, the worker and the
statistics all work. TCP-only socket options (keepalive) are left out for it, which
redis-py's unix connections refuse with a TypeError."""

from __future__ import annotations

import os

import pytest
from support.servers import redis_process
from worker_testkit import under_test, wait_for

pytestmark = pytest.mark.redis


def test_send_run_and_stats_over_a_unix_socket(tmp_path):
    sock = os.path.join(tmp_path, "redis.sock")
    with redis_process("--unixsocket", sock, "--unixsocketperm", "700"):
        url = f"unix://{sock}?db=0"
        with under_test("redis", url, url) as broker:
            t = broker.tasks
            t.record.options(queue="work").send("unix", 0)
            t.record.options(queue="work").send_many(("unix", i) for i in range(1, 20))
            assert broker.queue("work").ready == 20
            with broker.worker("--queues", "work", "--concurrency", "4"):
                wait_for(lambda: len(broker.done("unix")) == 20, what="20 tasks done")
                wait_for(lambda: broker.queue("work").completed_total == 20, what="20 acks")
