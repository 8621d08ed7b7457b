"""Reading broker statistics: short timeouts for AMQP URLs, and errors that never leak the
URL (it carries the password)."""

from __future__ import annotations

import asyncio

from ebbtide.brokers.rabbitmq.topology import parse_options
from ebbtide_operator.broker_io import BrokerReader, describe, with_amqp_timeouts
from ebbtide_operator.build import rabbitmq


def test_amqp_urls_get_short_timeouts_unless_they_set_their_own():
    url = "amqp://u:p@h:5672/%2F?management_port=15672&socket_timeout=9"
    options = parse_options(with_amqp_timeouts(url))
    assert options.management_url == "http://u:p@h:15672"
    assert "socket_timeout=9" in options.amqp_url
    assert "connection_attempts=1" in options.amqp_url and "stack_timeout=5" in options.amqp_url


def test_the_reader_passes_amqp_urls_with_timeouts_to_read_stats():
    seen = []
    reader = BrokerReader(
        max_threads=1, reader=lambda handle, queues, prefix, tls: seen.append(handle)
    )
    url = rabbitmq.rabbitmq_url("tq1", "ns1", "u", "p")
    try:
        asyncio.run(reader.read("ns1/tq1", url, ["default"], timeout=5))
    finally:
        reader.close()
    (handle,) = seen
    assert isinstance(handle, str) and handle.startswith(url)
    assert "connection_attempts=1" in handle


def test_error_descriptions_never_contain_the_url():
    error = ConnectionError("Error connecting to redis://:hunter2@10.0.0.1:6379/0")
    text = describe(error)
    assert "hunter2" not in text and text.startswith("ConnectionError")
    assert (
        describe(TimeoutError("Timeout reading from socket"))
        == "TimeoutError: Timeout reading from socket"
    )
