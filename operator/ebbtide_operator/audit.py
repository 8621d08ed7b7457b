"""The audit trail of the operator's writes: one structured log line per create, delete,
replace or scale, on the `ebbtide.audit` logger, so a log pipeline can answer "who changed
this, when, and by how much" without parsing prose. Kubernetes Events (the Provisioned,
Created, ScaledUp/ScaledDown and NameConflict ones) say the same to `kubectl describe`.

`who` is the operator's identity: EBBTIDE_OPERATOR_IDENTITY (the chart sets it to the
ServiceAccount's `system:serviceaccount:<ns>:<name>`), else the host it runs on.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Any

from ebbtide_operator.status import iso

log = logging.getLogger("ebbtide.audit")
# rotate: a role's password; renew: a managed broker's certificate.
ACTIONS = ("create", "delete", "replace", "rotate", "scale", "renew")


def identity() -> str:
    """Who the API server sees, as far as the operator knows it."""
    return os.environ.get("EBBTIDE_OPERATOR_IDENTITY") or f"ebbtide-operator@{socket.gethostname()}"


def audit_record(
    action: str,
    kind: str,
    namespace: str,
    name: str,
    taskqueue: str,
    now: float,
    count: int = 1,
    **details: Any,
) -> dict[str, Any]:
    """The record itself (pure): who, what, which object, when, how many."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    return {
        "audit": True,
        "who": identity(),
        "action": action,
        "object": f"{kind}/{name}",
        "namespace": namespace,
        "taskqueue": taskqueue,
        "when": iso(now),
        "count": count,
        **details,
    }


def record(
    action: str, kind: str, namespace: str, name: str, taskqueue: str, **details: Any
) -> dict[str, Any]:
    """Log one audit line (JSON, also attached as `record.audit` for structured handlers)."""
    entry = audit_record(action, kind, namespace, name, taskqueue, time.time(), **details)
    log.info(json.dumps(entry, sort_keys=True), extra={"audit": entry})
    return entry
