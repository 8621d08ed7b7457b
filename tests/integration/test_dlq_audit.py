"""`ebbtide dlq replay` and `ebbtide dlq purge` on each broker: each writes one JSON
audit line (who, what, when, how many, which queue); purge shows what goes and asks y/N
on a terminal (a real pseudo-terminal here), and without one refuses unless --yes."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import validation_tasks as vt
from ebbtide.audit import os_user
from test_validation import foreign
from worker_testkit import HERE, wait_for, worker


def dlq_cli(url: str, *args: str, answer: str | None = None) -> subprocess.CompletedProcess:
    """`python -m ebbtide dlq ARGS`: stdin a pseudo-terminal that types `answer`, or no
    terminal at all when `answer` is None."""
    cmd = [sys.executable, "-m", "ebbtide", "dlq", *args]
    env = {**os.environ, "EBBTIDE_BROKER_URL": url, "POD_NAME": "tool-1", "POD_NAMESPACE": "ops"}
    if answer is None:
        return subprocess.run(
            cmd,
            env=env,
            cwd=HERE,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=HERE,
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.write(controller, answer.encode() + b"\n")  # waits in the terminal's line buffer
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(terminal)
        os.close(controller)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def audit_lines(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith('{"')]


def bury(broker, n: int) -> list[str]:
    """`n` tasks in the DLQ of `default` (bad arguments from a foreign producer)."""
    vt.app.use_broker_url(broker.url)
    try:
        vt.charge.send("v", 1)  # declares the queue
    finally:
        vt.app.close()
    ids = [f"bad-{i}" for i in range(n)]
    for task_id in ids:
        broker.inject(task_id, foreign(task_id, "charge", ["v", "not a number"]))
    with worker(broker.url, app="validation_tasks:app", record_url=broker.record_url):
        wait_for(lambda: len(broker.dlq()) == n, what=f"{n} tasks in the DLQ")
    return ids


def test_replay_and_purge_are_audited_and_purge_is_confirmed(broker):
    ids = bury(broker, 3)
    who = os_user()

    replayed = dlq_cli(broker.url, "replay", "--id", ids[0], "--queue", "default")
    assert replayed.returncode == 0 and "replayed 1 dead task(s)" in replayed.stdout
    (line,) = audit_lines(replayed.stderr)
    assert line["action"] == "dlq.replay" and line["count"] == 1 and line["selected"] == 1
    assert line["queue"] == "default" and line["ids"] == [ids[0]] and line["outcome"] == "done"
    assert line["who"].startswith(f"{who}@") and line["pod"] == "ops/tool-1"
    assert line["when"].endswith("Z") and "broker" in line
    wait_for(lambda: {d["id"] for d in broker.dlq()} == set(ids[1:]), what="2 left dead")

    refused = dlq_cli(broker.url, "purge")  # no terminal, no --yes
    assert refused.returncode == 2 and refused.stdout == ""
    (said,) = refused.stderr.strip().splitlines()
    assert "would delete 2 dead task(s) of all queues" in said and "pass --yes" in said
    assert len(broker.dlq()) == 2

    declined = dlq_cli(broker.url, "purge", answer="n")
    assert declined.returncode == 1 and "nothing purged" in declined.stdout
    assert ids[1] in declined.stdout and "will be deleted for good" in declined.stdout
    assert "[y/N]" in declined.stdout and audit_lines(declined.stderr) == []
    assert len(broker.dlq()) == 2

    confirmed = dlq_cli(broker.url, "purge", "--id", ids[1], answer="y")
    assert confirmed.returncode == 0 and "purged 1 dead task(s)" in confirmed.stdout
    (line,) = audit_lines(confirmed.stderr)
    assert line["action"] == "dlq.purge" and line["count"] == 1 and line["queue"] == "*"
    assert [d["id"] for d in broker.dlq()] == [ids[2]]

    forced = dlq_cli(broker.url, "purge", "--yes", "--log-level", "ERROR")
    assert forced.returncode == 0 and "purged 1 dead task(s)" in forced.stdout
    (line,) = audit_lines(forced.stderr)  # written whatever the log level
    assert line["count"] == 1 and line["ids"] == [ids[2]]
    assert broker.dlq() == []
