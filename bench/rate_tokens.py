"""How honest is RabbitMQ's global rate limit (ebbtide/brokers/rabbitmq/rate.py)?

Several processes, each with its own worker connection (RabbitMQBroker.aconnect), ask
for tokens of one task in a tight loop through the real `acquire_rate`, never waiting,
for a few seconds. Then, over all grants together (ordered by the time their confirm
arrived, one monotonic clock for every process on a machine):

* the spacing between grant i and grant i+limit: grant i+limit needs token i to have
  expired, so it is at least the window; what it is above the window is how late
  RabbitMQ removes an expired token from the head of the queue. `lower` is measured
  from the later grant's request to the earlier grant's confirm, so it is below the
  true spacing by however long that confirm took to reach its client (a few ms on a
  busy machine); `upper` the other way round: its excess over the window bounds the
  lateness. The typical lateness is the median of their midpoints minus the window;
* the rate at saturation: `limit` tokens per that typical spacing.

    .venv/bin/python bench/rate_tokens.py                       # private rabbitmq-server
    .venv/bin/python bench/rate_tokens.py --url amqp://... --limit 100 --window-ms 1000
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def _ask(url: str, task: str, limit: int, window_ms: int, seconds: float, out) -> None:
    from ebbtide.brokers.rabbitmq.broker import RabbitMQBroker

    async def ask() -> list[tuple[float, float]]:
        broker = RabbitMQBroker(url)
        await broker.aconnect()
        grants, end = [], time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                asked = time.monotonic()
                granted, _wait = await broker.acquire_rate(task, limit, window_ms)
                if granted:
                    grants.append((asked, time.monotonic()))
        finally:
            await broker.aclose()
        return grants

    out.put(asyncio.run(ask()))


def measure(url: str, limit: int, window_ms: int, seconds: float, processes: int) -> dict:
    task = f"bench-{uuid.uuid4().hex[:8]}"
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_ask, args=(url, task, limit, window_ms, seconds, out))
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    grants = sorted((g for _ in procs for g in out.get()), key=lambda g: g[1])
    for p in procs:
        p.join()
    pairs = list(zip(grants, grants[limit:], strict=False))
    if not pairs:
        raise SystemExit(f"only {len(grants)} tokens: run for longer than one window")
    lower = [later[0] - earlier[1] for earlier, later in pairs]
    upper = [later[1] - earlier[0] for earlier, later in pairs]
    middle = statistics.median((lo + up) / 2 for lo, up in zip(lower, upper, strict=True))
    return {
        "processes": processes,
        "limit_per_s": limit * 1000 / window_ms,
        "granted": len(grants),
        "steady_per_s": limit / middle,
        "spacing_ms_min_lower": min(lower) * 1000,
        "lateness_ms_median": middle * 1000 - window_ms,
        "lateness_ms_max_upper": max(upper) * 1000 - window_ms,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="amqp:// URL (default: start a private rabbitmq-server)")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--window-ms", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--processes", type=int, default=2)
    args = ap.parse_args()

    def run(url: str) -> None:
        r = measure(url, args.limit, args.window_ms, args.seconds, args.processes)
        print(
            f"{r['processes']} processes, limit {r['limit_per_s']:g}/s "
            f"({args.limit} per {args.window_ms} ms): {r['granted']} tokens in "
            f"{args.seconds:g} s, {r['steady_per_s']:.1f}/s at saturation; "
            f"grant i -> i+{args.limit}: at least {r['spacing_ms_min_lower']:.1f} ms "
            f"(window {args.window_ms} ms); a token expired {r['lateness_ms_median']:.1f} ms "
            f"after its window (median), at most {r['lateness_ms_max_upper']:.1f} ms"
        )

    if args.url:
        run(args.url)
        return
    from support.servers import rabbitmq_server

    with rabbitmq_server(management=False) as server:
        run(server["url"])


if __name__ == "__main__":
    main()
