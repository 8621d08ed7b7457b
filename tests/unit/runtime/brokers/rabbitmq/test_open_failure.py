"""The worker's "broker unreachable" line: the socket's own words, not pika's nesting."""

from __future__ import annotations

from ebbtide.brokers.rabbitmq.connection import open_failure
from pika.adapters.utils import connection_workflow as cw
from pika.exceptions import AMQPConnectionError, ProbableAuthenticationError


def test_a_refused_socket_reads_as_the_socket_error() -> None:
    refused = ConnectionRefusedError(111, "Connection refused")
    workflow = cw.AMQPConnectionWorkflowFailed([cw.AMQPConnectorSocketConnectError(refused)])
    assert open_failure(workflow) == "[Errno 111] Connection refused"
    # as pika's AsyncioConnection hands it to on_open_error
    assert open_failure(AMQPConnectionError(workflow)) == "[Errno 111] Connection refused"


def test_the_last_attempt_is_the_one_reported() -> None:
    first = cw.AMQPConnectorSocketConnectError(TimeoutError("timed out"))
    last = cw.AMQPConnectorSocketConnectError(OSError(113, "No route to host"))
    assert open_failure(cw.AMQPConnectionWorkflowFailed([first, last])) == (
        "[Errno 113] No route to host"
    )


def test_other_errors_keep_their_own_text_on_one_line() -> None:
    refused_login = ProbableAuthenticationError("ACCESS_REFUSED -\n  bad login")
    assert open_failure(refused_login) == "ACCESS_REFUSED - bad login"
    assert open_failure(cw.AMQPConnectionWorkflowFailed([])) == "AMQPConnectionWorkflowFailed"
