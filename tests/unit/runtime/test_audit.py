"""The DLQ audit record (pure) and the purge confirmation rule."""

from __future__ import annotations

import json
import logging

import pytest
from ebbtide import audit, logs
from ebbtide.confirm import Step, confirmed, purge_step


def test_the_record_says_who_what_when_how_many_and_where():
    entry = audit.audit_record(
        "dlq.purge",
        queue=None,
        count=3,
        selected=4,
        now=0.0,
        identity={"who": "ann@laptop"},
        ids=["a"],
    )
    assert entry == {
        "audit": True,
        "who": "ann@laptop",
        "action": "dlq.purge",
        "queue": "*",
        "when": "1970-01-01T00:00:00Z",
        "count": 3,
        "selected": 4,
        "ids": ["a"],
    }
    with pytest.raises(ValueError, match="unknown audit action 'dlq.drop'"):
        audit.audit_record("dlq.drop", queue="q", count=0, selected=0, now=0, identity={})


def test_who_is_the_os_user_at_the_host_and_the_pod_when_there_is_one():
    assert audit.who({})["who"] == f"{audit.os_user()}@{audit.socket.gethostname()}"
    assert "pod" not in audit.who({})
    assert audit.who({"POD_NAME": "w-1", "POD_NAMESPACE": "team"})["pod"] == "team/w-1"
    assert audit.who({"POD_NAME": "w-1"})["pod"] == "w-1"


def test_an_audit_line_is_one_json_line_whatever_the_log_level(capsys):
    logs.setup("ERROR")
    try:
        audit.record("dlq.replay", queue="q", count=1, selected=1)
    finally:
        logs.setup("INFO")
    (line,) = capsys.readouterr().err.splitlines()
    entry = json.loads(line)
    assert entry["action"] == "dlq.replay" and entry["audit"] is True and entry["count"] == 1
    assert logging.getLogger("ebbtide.audit.dlq").propagate is False


@pytest.mark.parametrize(
    ("count", "yes", "tty", "step"),
    [
        (5, True, False, Step.GO),
        (0, False, False, Step.GO),
        (5, False, True, Step.ASK),
        (5, False, False, Step.REFUSE),
    ],
)
def test_purge_asks_on_a_terminal_and_refuses_without_one(count, yes, tty, step):
    assert purge_step(count, yes, tty) is step


@pytest.mark.parametrize(
    ("answer", "ok"), [("y", True), (" YES\n", True), ("", False), ("n", False), ("yep", False)]
)
def test_only_an_explicit_yes_confirms(answer, ok):
    assert confirmed(answer) is ok
