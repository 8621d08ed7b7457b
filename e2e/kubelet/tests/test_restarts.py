"""Restart policy, crash-loop backoff and probe thresholds."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from e2e.kubelet.probes import ProbeState, parse_probe  # noqa: E402
from e2e.kubelet.restarts import Backoff, should_restart  # noqa: E402


@pytest.mark.parametrize(
    ("policy", "code", "forced", "expected"),
    [
        ("Always", 0, False, True),
        ("Always", 1, False, True),
        ("OnFailure", 0, False, False),
        ("OnFailure", 2, False, True),
        ("OnFailure", 0, True, True),
        ("Never", 1, False, False),
        ("Never", 0, True, False),
    ],
)
def test_should_restart(policy, code, forced, expected):
    assert should_restart(policy, code, forced) is expected


def test_backoff_doubles_to_a_cap_and_resets_after_a_long_run():
    backoff = Backoff(base=10, cap=300)
    step, delays = 0, []
    for _ in range(8):
        delay, step = backoff.after_exit(step, ran_seconds=1)
        delays.append(delay)
    assert delays == [0, 10, 20, 40, 80, 160, 300, 300]
    delay, step = backoff.after_exit(step, ran_seconds=600)
    assert (delay, step) == (0, 1)


def test_probe_defaults():
    probe = parse_probe("readiness", {"httpGet": {"path": "/readyz", "port": "metrics"}})
    assert probe.handler == "httpGet" and probe.period == 10 and probe.timeout == 1
    assert probe.failure_threshold == 3 and probe.success_threshold == 1
    assert parse_probe("readiness", None) is None
    assert parse_probe("liveness", {"periodSeconds": 3}) is None


def test_readiness_starts_failed_and_follows_thresholds():
    spec = parse_probe(
        "readiness",
        {
            "tcpSocket": {"port": 1},
            "initialDelaySeconds": 5,
            "periodSeconds": 2,
            "failureThreshold": 2,
            "successThreshold": 2,
        },
    )
    state = ProbeState(spec, started_at=100.0)
    assert state.next_due == 105.0 and not state.ok
    assert not state.record(True, 105.0) and state.next_due == 107.0
    assert state.record(True, 107.0) and state.ok
    assert not state.record(False, 109.0) and state.ok
    assert state.record(False, 111.0) and not state.ok
    assert not state.failed  # readiness never kills


def test_liveness_fails_after_threshold():
    state = ProbeState(
        parse_probe("liveness", {"httpGet": {"port": 1}, "failureThreshold": 3}), 0.0
    )
    assert state.ok and not state.failed
    assert not state.record(False, 1) and not state.record(False, 2)
    assert state.record(False, 3) and state.failed


def test_startup_gives_up_or_starts():
    spec = parse_probe("startup", {"exec": {"command": ["true"]}, "failureThreshold": 2})
    state = ProbeState(spec, 0.0)
    assert not state.ok and not state.failed
    assert state.record(True, 1) and state.ok
    state = ProbeState(spec, 0.0)
    assert not state.record(False, 1)
    assert state.record(False, 2) and state.failed
