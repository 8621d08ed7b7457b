"""The tasks of the payload-format and encryption tests (test_payload_formats.py).

Worker subprocesses import this module as `codec_tasks:app`. Its App is configured the
way a pod's would be: the encryption keys come from the files of a mounted folder
($EBBTIDE_ENCRYPTION_KEYS_DIR, a Secret in a cluster), read by `ebbtide.App` itself.
Each task records what it received in the test Redis (worker_tasks.r)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import ebbtide
from worker_tasks import r

# CODEC_TEST_ENCRYPTION_REQUIRED=1: a worker that runs only encrypted tasks.
app = ebbtide.App(
    retry_backoff=0.05,
    encryption_required=os.environ.get("CODEC_TEST_ENCRYPTION_REQUIRED") == "1",
)


def fingerprint(value: Any) -> str:
    """What the test compares: the value's type and content, bytes included."""
    return hashlib.sha256(repr(value).encode()).hexdigest()[:16]


@app.task(name="codec.echo")
def echo(tag: str, value: Any, *, label: str = "") -> None:
    r().rpush(f"done:{tag}", f"{label}|{fingerprint(value)}")


@app.task(name="codec.fails", max_retries=0)
def fails(tag: str, secret: str) -> None:
    r().rpush(f"started:{tag}", 1)
    raise ValueError("refused (the message names no argument)")
