"""A demo task module: what a user's `tasks.py` looks like.

    export EBBTIDE_BROKER_URL=redis://127.0.0.1:6379/0
    ebbtide worker tasks:app --queues default,emails:3,reports:1 --concurrency 4
    python -c "import tasks; tasks.sleep.send(0.2)"

`make demo` enqueues bursts of `sleep` tasks and lets the operator scale workers running
this module.
"""

from __future__ import annotations

import asyncio
import time

import ebbtide

# The broker URL comes from the file EBBTIDE_BROKER_URL_FILE names (the operator mounts
# it in worker pods), else from EBBTIDE_BROKER_URL (local use). Arguments are checked
# against the type hints below at send() and again in the worker.
app = ebbtide.App()
app.queue("emails", max_backlog=100_000)  # send() past this raises ebbtide.BacklogFull


@app.task(name="sleep")
def sleep(seconds: float = 0.2) -> None:
    """Stands in for real work: a sync task, run on one of the worker's threads."""
    time.sleep(seconds)


@app.task(name="send_email", queue="emails", max_retries=5, timeout=30, rate="50/s")
async def send_email(to: str, subject: str) -> None:
    """An async task: runs on the worker's event loop, cancelled after 30 s, at most 50/s
    across every worker, retried with exponential backoff up to 5 times."""
    await asyncio.sleep(0.05)


@app.task(name="build_report", queue="reports", priority=0, timeout=600)
def build_report(report_id: int) -> str:
    """A long sync task: its lease is renewed by the heartbeat, so it never runs twice."""
    time.sleep(1.0)
    return f"report {report_id} done"


if __name__ == "__main__":
    ids = sleep.send_many((0.2,) for _ in range(100))
    send_email.options(priority=9, key="welcome:alice").send("alice@example.com", "Welcome")
    build_report.options(delay=5).send(42)
    print(f"enqueued {len(ids) + 2} tasks; `ebbtide stats` shows them")
