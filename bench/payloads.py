"""Payload formats benchmark: encoded size and send+run throughput, JSON vs MessagePack,
with and without zstd, for a small and a 100 KiB payload, on a real private Redis.

For each case: the stored payload's size, the CPU cost of encoding and decoding one
(in process), `send_many` of N tasks (tasks/s), then ONE worker process
(`--concurrency 8`) spawned on the filled queue and timed until the Redis counter
reaches N (start-up included, as in bench/throughput.py); send+run is N over both.
Two rows are encrypted (AES-GCM; the worker reads the key from a folder, as from a
mounted Secret). "zstd" compresses every body (compress_threshold=0) so the small row shows what it
would cost; by default only bodies over 16 KiB are compressed.

    .venv/bin/python bench/payloads.py                 # the table in docs/benchmarks.md
    .venv/bin/python bench/payloads.py --quick --json
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))
sys.path.insert(0, str(BENCH))

import ebbtide  # noqa: E402
from ebbtide.message import decode_payload, encode_payload  # noqa: E402
from measure import run_worker  # noqa: E402
from support.servers import redis_server  # noqa: E402

COUNTER_KEY = "bench:done"
QUEUE = "bench"
# (serializer, compress_threshold, encrypted); the worker holds the key (KEY_ENV).
FORMATS = [
    ("json", None, False),
    ("json", 0, False),
    ("msgpack", None, False),
    ("msgpack", 0, False),
    ("json", None, True),
    ("msgpack", 0, True),
]
KEY_ID = "bench"
KEY = base64.b64encode(bytes(range(32))).decode()


def small_payload() -> dict[str, Any]:
    """A typical task argument: an id, an address, a few flags (~150 bytes of JSON)."""
    return {
        "user_id": 48213,
        "email": "someone@example.com",
        "template": "welcome-v2",
        "locale": "en-GB",
        "send_at": 1764633600.5,
        "flags": [True, False, None],
    }


def big_payload(target: int = 100 * 1024) -> list[dict[str, Any]]:
    """~100 KiB of JSON records (a report's rows: ids, names, numbers, tags), seeded so
    every run measures the same bytes."""
    rng = random.Random(16)
    words = ["alpha", "bravo", "delta", "echo", "kilo", "lima", "oscar", "tango", "zulu"]
    rows: list[dict[str, Any]] = []
    while len(json.dumps(rows, separators=(",", ":"))) < target:
        i = len(rows)
        rows.append(
            {
                "id": 100_000 + i,
                "name": f"{rng.choice(words)}-{rng.randrange(10**6)}",
                "score": round(rng.uniform(0, 1000), 3),
                "count": rng.randrange(10**4),
                "active": rng.random() < 0.5,
                "tags": rng.sample(words, 3),
            }
        )
    return rows


@dataclass
class Row:
    payload: str
    serializer: str
    zstd: str  # "always" (compress_threshold=0) or "off"
    fmt: str  # what the envelope says it holds (zstd is dropped when it does not shrink)
    size_bytes: int
    encode_us: float
    decode_us: float
    send_per_s: float
    run_per_s: float
    send_run_per_s: float
    redis_bytes_per_task: float
    error: str | None = None


def per_call_us(fn, seconds: float = 0.3) -> float:
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        fn()
        calls += 1
    return elapsed / calls * 1e6


def run_case(
    url: str,
    env: dict[str, str],
    name: str,
    value: Any,
    fmt: tuple[str, int | None],
    tasks: int,
    log_path: str,
) -> Row:
    serializer, threshold, encrypted = fmt
    keys = {KEY_ID: KEY} if encrypted else {}
    app = ebbtide.App(
        url, serializer=serializer, compress_threshold=threshold, encryption_keys=keys
    )
    task = app.task(queue=QUEUE, name="bench.payload")(lambda data: None)
    client = redis.Redis.from_url(url)
    client.flushall()
    try:
        sample = encode_payload("x" * 32, "bench.payload", (value,), {}, 1 << 30, codec=app.codec)
        label = json.loads(sample).get("fmt") or "json (classic)"
        enc = per_call_us(
            lambda: encode_payload(
                "x" * 32, "bench.payload", (value,), {}, 1 << 30, codec=app.codec
            )
        )
        dec = per_call_us(lambda: decode_payload(sample, app.codec))
        before = client.info("memory")["used_memory"]
        started = time.perf_counter()
        for i in range(0, tasks, 500):
            task.send_many(((value,),) * min(500, tasks - i))
        send_s = time.perf_counter() - started
        stored = (client.info("memory")["used_memory"] - before) / tasks
        argv = [
            sys.executable,
            "-m",
            "ebbtide",
            "--log-level",
            "WARNING",
            "worker",
            "anchors.payload_app:app",
            "--queues",
            QUEUE,
            "--concurrency",
            "8",
        ]
        run = run_worker(argv, env, url, COUNTER_KEY, tasks, 600, log_path)
        return Row(
            name,
            serializer,
            "off" if threshold is None else "always",
            label,
            len(sample.encode()),
            enc,
            dec,
            tasks / send_s,
            tasks / run.seconds,
            tasks / (send_s + run.seconds),
            stored,
            run.error,
        )
    finally:
        client.close()
        app.close()


def median_row(same: tuple[Row, ...]) -> Row:
    """One case over the rounds: the median of every figure (the first error, if any)."""
    first = same[0]
    figures = {
        f: statistics.median(getattr(r, f) for r in same)
        for f in (
            "encode_us",
            "decode_us",
            "send_per_s",
            "run_per_s",
            "send_run_per_s",
            "redis_bytes_per_task",
        )
    }
    error = next((r.error for r in same if r.error), None)
    return Row(
        first.payload,
        first.serializer,
        first.zstd,
        first.fmt,
        first.size_bytes,
        error=error,
        **figures,
    )


def render(rows: list[Row]) -> str:
    head = (
        "| payload | serializer | zstd | stored as | stored bytes | encode µs | decode µs | send_many/s "
        "| run/s (1 worker) | send+run/s | Redis memory/task |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r.payload} | {r.serializer} | {r.zstd} | {r.fmt} | {r.size_bytes:,} | {r.encode_us:,.1f} | {r.decode_us:,.1f} "
            f"| {r.send_per_s:,.0f} | {r.run_per_s:,.0f} | {r.send_run_per_s:,.0f} "
            f"| {r.redis_bytes_per_task:,.0f} |" + (f" {r.error}" if r.error else "")
        )
    return "\n".join(lines)


@contextlib.contextmanager
def private_redis(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    with redis_server() as started:
        yield started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small-tasks", type=int, default=20_000)
    p.add_argument("--big-tasks", type=int, default=1_000)
    p.add_argument("--quick", action="store_true", help="2,000 small and 200 big tasks")
    p.add_argument("--redis-url", default=None, help="an existing Redis (it is FLUSHALLed)")
    p.add_argument("--repeat", type=int, default=1, help="rounds; each figure is the median")
    p.add_argument("--json", action="store_true")
    opts = p.parse_args(argv)
    small_n, big_n = (2_000, 200) if opts.quick else (opts.small_tasks, opts.big_tasks)
    cases = [("small", small_payload(), small_n), ("100 KiB", big_payload(), big_n)]
    with private_redis(opts.redis_url) as url, tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "BENCH_BROKER_URL": url,
            "BENCH_COUNTER_URL": url,
            "BENCH_COUNTER_KEY": COUNTER_KEY,
            "BENCH_QUEUE": QUEUE,
            "PYTHONPATH": os.pathsep.join([str(BENCH), os.environ.get("PYTHONPATH", "")]),
            "EBBTIDE_ENCRYPTION_KEYS_DIR": f"{tmp}/keys",  # the worker reads every row
        }
        Path(tmp, "keys").mkdir()
        Path(tmp, "keys", KEY_ID).write_text(KEY)
        rounds: list[list[Row]] = []
        for round_no in range(opts.repeat):  # whole rounds, so noise spreads over every case
            rows = []
            for name, value, n in cases:
                for fmt in FORMATS:
                    print(f"round {round_no + 1}: {name} {fmt}", file=sys.stderr)
                    rows.append(run_case(url, env, name, value, fmt, n, f"{tmp}/worker.log"))
            rounds.append(rows)
    rows = [median_row(same) for same in zip(*rounds, strict=True)]
    print(json.dumps([asdict(r) for r in rows], indent=2) if opts.json else render(rows))
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
