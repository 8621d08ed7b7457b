"""A broker's refusal of a right becomes PermissionDenied naming the user and operation."""

from __future__ import annotations

import pika.exceptions
import pytest
import redis
from ebbtide import PermissionDenied
from ebbtide.brokers.rabbitmq.broker import refusal
from ebbtide.brokers.redis.broker import RedisBroker, is_refusal


@pytest.mark.parametrize(
    "text",
    [
        "this user has no permissions to run the 'flushall' command",  # NOPERM, as redis-py
        "The user executing the script can't run this command or subcommand script: ab",
        "The user executing the script can't access at least one of the keys mentioned",
    ],
)
def test_redis_acl_refusals_are_recognised(text):
    assert is_refusal(redis.exceptions.ResponseError(text))
    assert not is_refusal(redis.exceptions.ResponseError("OOM command not allowed"))
    assert not is_refusal(ValueError(text))


def test_a_refused_script_names_the_user_and_the_operation():
    broker = RedisBroker("redis://ebbtide-producer:pw@127.0.0.1:1/0")
    with pytest.raises(PermissionDenied) as error, broker._rights("claim tasks"):
        raise redis.exceptions.ResponseError(
            "The user executing the script can't run this command script: 0f, on @user_script:1."
        )
    message = str(error.value)
    assert "'ebbtide-producer' lacks the right to claim tasks" in message
    assert "can't run this command" in message and "0f" not in message
    assert "pw" not in message
    with pytest.raises(redis.exceptions.ResponseError, match="OOM"), broker._rights("x"):
        raise redis.exceptions.ResponseError("OOM command not allowed")


def test_rabbitmq_access_refused_and_a_missing_checked_queue_become_permission_denied():
    text = "ACCESS_REFUSED - access to queue 'ebbtide.q' in vhost 'tq' refused for user 'p'"
    denied = refusal(pika.exceptions.ChannelClosedByBroker(403, text), "p", "enqueue to 'q'")
    assert isinstance(denied, PermissionDenied) and "'p' lacks the right to enqueue" in str(denied)
    assert text in str(denied)
    missing = pika.exceptions.ChannelClosedByBroker(404, "NOT_FOUND - no queue 'ebbtide.x'")
    assert "declare=passive" in str(refusal(missing, "p", "enqueue to 'x'"))
    assert (
        refusal(pika.exceptions.ChannelClosedByBroker(406, "PRECONDITION_FAILED"), "p", "x") is None
    )
