"""A worker reads its broker URL from EBBTIDE_BROKER_URL_FILE (a mounted Secret in a
pod), on each broker: the file wins over the env var and is never copied into the env a
task's subprocess inherits; a missing file is one clear error line."""

from __future__ import annotations

import os
import subprocess
import sys

import validation_tasks as vt
from worker_testkit import HERE, wait_for, worker

NOWHERE = "redis://127.0.0.1:1/0"  # nothing listens there


def test_the_worker_reads_the_url_file_which_wins_and_is_not_handed_on(broker, tmp_path):
    path = tmp_path / "url"
    path.write_text(broker.url + "\n")  # as a Secret key often is: with a newline
    vt.app.use_broker_url(broker.url)
    try:
        vt.child_env.send("env")
    finally:
        vt.app.close()
    env = {"EBBTIDE_BROKER_URL": NOWHERE, "EBBTIDE_BROKER_URL_FILE": str(path)}
    with worker(NOWHERE, app="validation_tasks:app", record_url=broker.record_url, env=env) as proc:
        wait_for(lambda: len(broker.done("env")) == 2, what="the task run via the file's URL")
        assert proc.poll() is None
    # The subprocess saw the env var as it was given, not the file's URL.
    assert broker.done("env") == [NOWHERE, str(path)]


def test_a_missing_url_file_is_one_clear_line(tmp_path):
    env = {
        **os.environ,
        "EBBTIDE_BROKER_URL_FILE": str(tmp_path / "absent"),
        "PYTHONPATH": str(HERE),
    }
    out = subprocess.run(
        [sys.executable, "-m", "ebbtide", "worker", "validation_tasks:app"],
        env=env,
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("ebbtide: error: EBBTIDE_BROKER_URL_FILE=") and "absent" in line
    assert "No such file or directory" in line
