"""The audit trail of `ebbtide dlq replay` and `ebbtide dlq purge`: one JSON line per
action on stderr (logger `ebbtide.audit.dlq`), whatever the log level, in the shape of
the operator's audit lines (operator/ebbtide_operator/audit.py): `audit`, `who`,
`action`, `when`, `count`, plus what was acted on.

`who` is the OS user and the host (in a pod, the host name is the pod's name), with the
pod's namespace/name when POD_NAME is set (the operator sets it on worker pods).
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any

ACTIONS = ("dlq.replay", "dlq.purge")


class _StderrLine(logging.Handler):
    """The record's message, alone, on whatever sys.stderr is at the time."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(record.getMessage() + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


_log = logging.getLogger("ebbtide.audit.dlq")
_log.addHandler(_StderrLine())
_log.setLevel(logging.INFO)  # an audit line is never filtered out by --log-level
_log.propagate = False


def os_user() -> str:
    """The real user's name (not $USER, which anyone can set), else `uid:<n>` (a
    container user without a passwd entry)."""
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}"


def who(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`who` (user@host) and, in a pod, `pod` (namespace/name)."""
    env = os.environ if env is None else env
    out = {"who": f"{os_user()}@{socket.gethostname()}"}
    if env.get("POD_NAME"):
        ns = env.get("POD_NAMESPACE")
        out["pod"] = f"{ns}/{env['POD_NAME']}" if ns else env["POD_NAME"]
    return out


def iso(ts: float) -> str:
    """The operator's time format (UTC, seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def audit_record(
    action: str,
    *,
    queue: str | None,
    count: int,
    selected: int,
    now: float,
    identity: Mapping[str, str],
    **details: Any,
) -> dict[str, Any]:
    """The record itself (pure): who, what, which queue (`*` for all), when, how many
    were acted on (`count`) of how many were selected."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    return {
        "audit": True,
        **identity,
        "action": action,
        "queue": queue or "*",
        "when": iso(now),
        "count": count,
        "selected": selected,
        **details,
    }


def record(action: str, **fields: Any) -> dict[str, Any]:
    """Write one audit line now, as the current user."""
    entry = audit_record(action, now=time.time(), identity=who(), **fields)
    _log.info(json.dumps(entry, sort_keys=True, default=str))
    return entry
