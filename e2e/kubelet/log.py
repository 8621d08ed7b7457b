"""The kubelet's log: one line per event on stderr, `kubelet: <what> key=value ...`.

Single lines so that a test failure can print the tail of the kubelet's log and grep it.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import datetime

_lock = threading.Lock()


def _value(value: object) -> str:
    text = str(value)
    if not text or any(ch.isspace() or ch in "\"'" for ch in text):
        return json.dumps(text)
    return text


def log(what: str, /, pod: str | None = None, **fields: object) -> None:
    """`kubelet: started ns/pod container=x pid=N log=... t=HH:MM:SS.mmm`: what happened,
    the pod it happened to (if any), key=value fields (None-valued ones are left out), and
    the local time last, to line the log up with a test's own."""
    parts = [what, *([pod] if pod else [])]
    parts += [f"{key}={_value(value)}" for key, value in fields.items() if value is not None]
    parts.append(f"t={datetime.now().strftime('%H:%M:%S.%f')[:-3]}")
    line = "kubelet: " + " ".join(parts) + "\n"
    with _lock:
        sys.stderr.write(line)
        sys.stderr.flush()
