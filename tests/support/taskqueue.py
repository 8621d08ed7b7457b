"""TaskQueue bodies for the operator's builder tests, spelled in one place."""

from __future__ import annotations

import base64
from typing import Any

UID = "uid-123"
NAMESPACE = "ns1"


def taskqueue(spec: dict[str, Any], name: str = "tq1", namespace: str = NAMESPACE) -> dict:
    """A TaskQueue as kopf hands it to the operator (what the builders take as `owner`)."""
    return {
        "apiVersion": "ebbtide.dev/v1alpha1",
        "kind": "TaskQueue",
        "metadata": {"name": name, "namespace": namespace, "uid": UID, "generation": 1},
        "spec": spec,
    }


def managed_spec(broker_type: str = "redis", **managed: Any) -> dict[str, Any]:
    """A minimal spec with a managed broker (`managed` is its `broker.managed` block)."""
    return {
        "broker": {"type": broker_type, "managed": managed},
        "queues": [{"name": "default"}],
        "worker": {"image": "w:1", "app": "m.tasks:app"},
    }


def assert_owned(obj: dict) -> None:
    """Owned by the TaskQueue (so deleting it garbage-collects `obj`), in its namespace."""
    (ref,) = obj["metadata"]["ownerReferences"]
    assert ref["uid"] == UID and ref["kind"] == "TaskQueue" and ref["controller"] is True
    assert obj["metadata"]["namespace"] == NAMESPACE


def decoded(secret: dict) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
