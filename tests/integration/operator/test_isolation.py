"""One blackholed broker among healthy ones: the healthy TaskQueues' ticks stay on
schedule. The TaskQueues, their Secrets and worker Deployments live on the real
kube-apiserver (tests/support/apiserver.py), so each tick's reads and status writes cross
that network boundary too. The hung broker is a real Redis behind toxiproxy with a
`timeout` toxic (bytes dropped, the link never closed). There are more hung TaskQueues
than read threads, so only the per-URL cap keeps the healthy ones from starving. The run
ends on a condition (the hung TaskQueues have each reported the broker down twice); the
bound on healthy ticks is generous: half the slots of that window."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
import worker_tasks as rt
from ebbtide_operator import provision
from ebbtide_operator.broker_io import BrokerReader
from ebbtide_operator.metrics import OperatorMetrics
from ebbtide_operator.spec import parse_spec
from ebbtide_operator.tick import TaskQueueTicker, run_periodically
from support.apiserver import Namespace, RecordingCluster
from support.toxiproxy import toxiproxy_server

pytestmark = pytest.mark.redis
# The loop's own interval (the CRD takes whole seconds only: the stored spec says 1).
POLL = 0.5
HUNG, HEALTHY, THREADS = 10, 4, 8  # 10 hung TaskQueues > 8 threads


def taskqueue(name: str) -> dict:
    return {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "TaskQueue",
        "metadata": {"name": name},
        "spec": {
            "broker": {"type": "redis", "external": {"secretRef": {"name": f"{name}-url"}}},
            "queues": [{"name": "default"}],
            "worker": {"image": "w:1", "app": "worker_tasks:app", "concurrency": 1},
            "scaling": {"minReplicas": 0, "maxReplicas": 4, "pollSeconds": 1},
        },
    }


def test_a_blackholed_redis_never_delays_healthy_taskqueues(redis_db, redis_url, kube):
    rt.app.use_broker_url(redis_db)
    rt.record.send_many(("x", i) for i in range(20))
    rt.app.close()
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    with toxiproxy_server() as toxi:
        proxied = f"redis://127.0.0.1:{toxi.proxy('hung-redis', port)}/0"
        assert redis.Redis.from_url(proxied).ping()  # a working link, until blackholed
        toxi.blackhole("hung-redis")
        asyncio.run(scenario(*kube, redis_db, proxied))


async def scenario(
    cluster: RecordingCluster, ns: Namespace, healthy_url: str, hung_url: str
) -> None:
    reader = BrokerReader(max_threads=THREADS)
    metrics = OperatorMetrics()
    starts: dict[str, list[float]] = {}
    errors: dict[str, list[str]] = {}
    done = asyncio.Event()
    names = [f"hung{i}" for i in range(HUNG)] + [f"good{i}" for i in range(HEALTHY)]
    loops = []
    for name in names:
        body = await asyncio.to_thread(ns.create_taskqueue, taskqueue(name))
        url = hung_url if name.startswith("hung") else healthy_url
        await asyncio.to_thread(ns.add_secret, f"{name}-url", {"url": url})
        await provision.reconcile(cluster, body, parse_spec(body["spec"]))
        ticker = TaskQueueTicker(cluster, reader, metrics, cluster.record_event)

        async def step(ticker=ticker, body=body, name=name) -> None:
            starts.setdefault(name, []).append(time.monotonic())
            outcome = await ticker.tick(body)
            if outcome.broker_error:
                errors.setdefault(name, []).append(outcome.broker_error)
            if all(len(errors.get(f"hung{i}", ())) >= 2 for i in range(HUNG)):
                done.set()

        loops.append(
            run_periodically(
                step,
                interval=lambda: POLL,
                sleep=asyncio.sleep,
                stopped=done.is_set,
                initial_delay=(len(loops) % 5) * POLL / 5,
            )
        )
    began = time.monotonic()
    runs = asyncio.gather(*loops)
    try:
        await asyncio.wait_for(done.wait(), 60)
        window = time.monotonic() - began
        await asyncio.wait_for(runs, 30)
    finally:
        reader.close()
    slots = int(window / POLL)
    for i in range(HEALTHY):
        name = f"good{i}"
        ticks = [t for t in starts[name] if t <= began + window]
        assert len(ticks) >= slots // 2, (name, len(ticks), slots)
        assert not errors.get(name), errors[name][:3]
