"""Enqueue the demo's burst through the runtime's producer API (examples/tasks.py's app).

    demo_burst.py --broker-url redis://127.0.0.1:PORT/0 --count 2000 --task NAME [--arg 0.05]

Prints one line: how many tasks went to which queue, and how fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CHUNK = 500


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker-url", required=True)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--module", default="tasks", help="module in examples/ (default tasks)")
    parser.add_argument("--task", required=True, help="registered task name")
    parser.add_argument(
        "--arg",
        action="append",
        default=[],
        help="positional argument for every task, as JSON (repeatable), e.g. --arg 0.05",
    )
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error(f"--count must be >= 1, got {args.count}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(EXAMPLES))
    app = importlib.import_module(args.module).app
    app.use_broker_url(args.broker_url)
    task = app.tasks.get(args.task)
    if task is None:
        known = ", ".join(sorted(app.tasks)) or "none"
        print(f"demo_burst: unknown --task {args.task!r}; examples/{args.module}.py has: {known}")
        return 2
    call_args = tuple(json.loads(value) for value in args.arg)
    started = time.monotonic()
    sent = 0
    while sent < args.count:
        size = min(CHUNK, args.count - sent)
        task.send_many([call_args] * size)
        sent += size
    elapsed = time.monotonic() - started
    print(f"enqueued {sent} x {task.name} on queue {task.queue!r} in {elapsed:.2f}s")
    app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
