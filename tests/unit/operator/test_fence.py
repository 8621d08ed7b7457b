"""The status write's precondition (fence.py): which resourceVersion it carries, so a
stale writer is refused and a fresh one is not refused by its own lagging watch."""

from __future__ import annotations

import pytest
from ebbtide_operator import fence


def body(version: str, writer: str | None = None) -> dict:
    status = {"writer": writer} if writer else {}
    return {"metadata": {"resourceVersion": version}, "status": status}


def test_before_any_write_the_decision_is_made_from_the_body_so_it_carries_its_version():
    assert fence.StatusFence("op/1").precondition(body("7", "old-op/9#40")) == "7"


def test_after_a_write_a_lagging_body_does_not_refuse_our_own_next_write():
    guard = fence.StatusFence("op/1")
    guard.wrote(guard.next_token(), "8")
    # The watch has not delivered our write yet: the body is older, and says so.
    assert guard.precondition(body("7", "old-op/9#40")) == "8"


def test_a_body_that_shows_our_status_carries_its_own_later_version():
    """kopf's annotations or a spec edit moved the object on, not its status."""
    guard = fence.StatusFence("op/1")
    token = guard.next_token()
    guard.wrote(token, "8")
    assert guard.precondition(body("12", token)) == "12"


def test_a_body_that_shows_someone_elses_status_after_ours_carries_our_version_so_it_409s():
    guard = fence.StatusFence("op/1")
    guard.wrote(guard.next_token(), "8")
    assert guard.precondition(body("9", "other/2#1")) == "8"


def test_tokens_are_unique_per_write_and_name_the_pod():
    guard = fence.StatusFence("pod-a/3f2a1b")
    first = guard.next_token()
    assert first == guard.next_token() == "pod-a/3f2a1b#1"  # taken only on success
    guard.wrote(first, "8")
    assert guard.next_token() == "pod-a/3f2a1b#2"
    assert fence.writer_pod(first) == "pod-a" and fence.writer_pod(None) is None


def test_after_a_conflict_foreign_status_is_adopted_and_its_version_carried():
    guard = fence.StatusFence("op/1")
    guard.wrote(guard.next_token(), "8")
    mine, theirs = body("11", "op/1#1"), body("11", "other/2#5")
    assert not guard.foreign(mine) and guard.foreign(theirs)
    guard.adopt(theirs)
    assert guard.precondition(body("11", "other/2#5")) == "11"
    assert guard.precondition(body("9", "other/2#4")) == "11"  # the watch still lags


@pytest.mark.parametrize(
    "env, pod",
    [({"POD_NAME": "ebbtide-7c9-x2"}, "ebbtide-7c9-x2"), ({"POD_NAME": " "}, None)],
)
def test_the_writer_is_the_pod_with_a_fresh_incarnation_per_process(env, pod):
    first, second = fence.default_writer(env), fence.default_writer(env)
    assert first != second, "a restarted container must not reuse its predecessor's tokens"
    if pod is not None:
        assert fence.writer_pod(first) == pod
    else:
        assert fence.writer_pod(first)  # the host name


def test_a_body_without_a_version_or_writer_is_read_as_none():
    assert fence.resource_version({"metadata": {}}) is None
    assert fence.written_by({"status": {"writer": 3}}) is None
    assert fence.written_by(None) is None
