"""cli_errors.describe: the one line (and exit code) each kind of failure gets."""

from __future__ import annotations

import pika.exceptions
import redis.exceptions
from ebbtide.cli_errors import EXIT_FAILED, EXIT_USAGE, broker_kind, describe
from ebbtide.errors import BrokerEvicts, UnsupportedBroker

URL = "redis://:hunter2@cache:6379/0"


def raised(exc: BaseException, cause: BaseException | None = None) -> BaseException:
    """`exc` as `raise exc from cause` leaves it (with its __cause__ set)."""
    try:
        raise exc from cause
    except BaseException as e:  # noqa: B036 - the point is to catch anything
        return e


def test_an_unreachable_redis_names_the_redacted_url_and_the_socket_error():
    exc = raised(
        redis.exceptions.ConnectionError("Error 111 connecting to cache:6379. Connection refused."),
        ConnectionRefusedError(111, "Connection refused"),
    )
    failure = describe(exc, URL)
    assert failure is not None
    assert (
        failure.message
        == "ebbtide: cannot reach Redis at redis://:***@cache:6379/0: Connection refused"
    )
    assert failure.code == EXIT_FAILED


def test_our_wrapper_of_a_redis_error_reads_the_same():
    inner = raised(redis.exceptions.ConnectionError("x"), OSError(113, "No route to host"))
    outer = raised(ConnectionError("cannot reach Redis at ...: x"), inner)
    failure = describe(outer, URL)
    assert failure is not None and failure.message.endswith(": No route to host")


def test_a_redis_timeout_without_a_socket_error_says_timed_out():
    failure = describe(raised(redis.exceptions.TimeoutError("Timeout reading")), URL)
    assert failure is not None
    assert failure.message == "ebbtide: cannot reach Redis at redis://:***@cache:6379/0: timed out"


def test_a_refused_login_is_not_called_unreachable():
    failure = describe(raised(redis.exceptions.AuthenticationError("WRONGPASS invalid")), URL)
    assert failure is not None
    assert "refused the login: WRONGPASS invalid" in failure.message
    amqp = "amqp://u:pw@mq:5672/"
    failure = describe(raised(pika.exceptions.ProbableAuthenticationError("ACCESS_REFUSED")), amqp)
    assert failure is not None
    assert failure.message.startswith(
        "ebbtide: RabbitMQ at amqp://u:***@mq:5672/ refused the login"
    )


def test_rabbitmq_nests_the_socket_error_in_its_args():
    exc = raised(pika.exceptions.AMQPConnectionError(OSError(111, "Connection refused")))
    failure = describe(raised(ConnectionError("cannot reach RabbitMQ"), exc), "amqp://mq/")
    assert failure is not None
    assert failure.message == "ebbtide: cannot reach RabbitMQ at amqp://mq/: Connection refused"


def test_other_redis_errors_and_ours_are_one_line_exit_1():
    failure = describe(raised(redis.exceptions.ResponseError("OOM command not allowed\nwhen")), URL)
    assert failure is not None and failure.code == EXIT_FAILED
    assert (
        failure.message
        == "ebbtide: Redis at redis://:***@cache:6379/0 answered: OOM command not allowed when"
    )
    failure = describe(BrokerEvicts("allkeys-lru", "redis://cache"), URL)
    assert failure is not None and failure.code == EXIT_FAILED and "\n" not in failure.message
    failure = describe(OSError(98, "Address already in use"), None)
    assert failure is not None and "Address already in use" in failure.message


def test_usage_errors_exit_2_and_bugs_keep_their_traceback():
    failure = describe(UnsupportedBroker("unsupported broker URL scheme 'ftp'"), "ftp://x")
    assert failure is not None and failure.code == EXIT_USAGE
    assert failure.message == "ebbtide: error: unsupported broker URL scheme 'ftp'"
    assert describe(ZeroDivisionError("a bug"), URL) is None
    assert describe(KeyError("a bug"), URL) is None


def test_broker_kind_follows_the_scheme():
    assert broker_kind("rediss://x") == "Redis" and broker_kind("unix:///s") == "Redis"
    assert broker_kind("amqps://x") == "RabbitMQ"
    assert broker_kind(None) == "the broker"
