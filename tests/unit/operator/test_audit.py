"""Audit records say who did what to which object, when and how many."""

from __future__ import annotations

import json
import logging

import pytest
from ebbtide_operator import audit


def test_the_record_carries_who_what_object_when_and_how_many(monkeypatch):
    monkeypatch.setenv("EBBTIDE_OPERATOR_IDENTITY", "system:serviceaccount:ops:ebbtide")
    entry = audit.audit_record("scale", "Deployment", "ns", "tq-worker", "tq", 0.0, count=3)
    assert entry == {
        "audit": True,
        "who": "system:serviceaccount:ops:ebbtide",
        "action": "scale",
        "object": "Deployment/tq-worker",
        "namespace": "ns",
        "taskqueue": "tq",
        "when": "1970-01-01T00:00:00Z",
        "count": 3,
    }


def test_without_an_identity_the_host_is_named(monkeypatch):
    monkeypatch.delenv("EBBTIDE_OPERATOR_IDENTITY", raising=False)
    assert audit.identity().startswith("ebbtide-operator@")


def test_unknown_actions_are_refused():
    with pytest.raises(ValueError, match="unknown audit action"):
        audit.audit_record("adopt", "Service", "ns", "x", "tq", 0.0)


def test_a_log_line_is_json_on_the_audit_logger(caplog):
    caplog.set_level(logging.INFO, logger="ebbtide.audit")
    audit.record("delete", "Service", "ns", "tq-redis", "tq")
    (line,) = [r for r in caplog.records if r.name == "ebbtide.audit"]
    assert json.loads(line.getMessage())["action"] == "delete"
    assert line.audit["object"] == "Service/tq-redis"
