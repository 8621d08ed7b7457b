"""The runtime and the operator's statistics reader over TLS, against a real redis-server
listening on TLS only and a real rabbitmq-server with AMQPS and https management only,
both using a CA and server certificate from the operator's own certs.py.

Producer, worker and stats verify the server against the CA named by
EBBTIDE_BROKER_CA_FILE (or a BrokerTLS); a client given another CA fails with one
clear line naming the CA it checked against.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import ebbtide
import pytest
from ebbtide.brokers import BrokerTLS
from ebbtide.stats import read_stats
from ebbtide_operator.broker_io import BrokerReader
from support.servers import TLSFiles, make_tls_files, rabbitmq_server, redis_process
from worker_testkit import recorder, wait_for, worker

PASSWORD = "s3cret-tls"


@pytest.fixture(scope="module")
def tls_dirs(tmp_path_factory) -> tuple[TLSFiles, TLSFiles]:
    """The broker's CA and certificate, and an unrelated CA (the wrong one)."""
    right = make_tls_files(str(tmp_path_factory.mktemp("tls")))
    wrong = make_tls_files(str(tmp_path_factory.mktemp("other-ca")))
    return right, wrong


@pytest.fixture(scope="module")
def tls_redis(tls_dirs) -> Iterator[str]:
    with redis_process(password=PASSWORD, tls=tls_dirs[0]) as server:
        yield server.url


@pytest.fixture(scope="module")
def tls_rabbitmq(tls_dirs) -> Iterator[dict]:
    with rabbitmq_server(tls=tls_dirs[0]) as started:
        yield started


@contextlib.contextmanager
def producer(url: str, ca_file: str, monkeypatch) -> Iterator[ebbtide.App]:
    """An App whose broker trusts `ca_file` (EBBTIDE_BROKER_CA_FILE, read when it opens)."""
    monkeypatch.setenv("EBBTIDE_BROKER_CA_FILE", ca_file)
    app = ebbtide.App(broker_url=url)
    try:
        yield app
    finally:
        app.close()


def operator_stats(url: str, ca_file: str):
    reader = BrokerReader(max_threads=1)
    try:
        return asyncio.run(
            reader.read("ns/tq", url, ["default"], timeout=10, tls=BrokerTLS(ca_file=ca_file))
        )
    finally:
        reader.close()


def run_round_trip(url: str, ca_file: str, record_url: str, monkeypatch, tag: str) -> None:
    """Send 5 tasks, see a real worker (trusting `ca_file`) run them all, read the stats."""
    rec = recorder(record_url)
    with producer(url, ca_file, monkeypatch) as app:

        @app.task(name="record")
        def record(tag: str, i: int) -> None: ...

        record.send_many([(tag, i) for i in range(5)])
        # RabbitMQ's management figures are sampled: poll until they show the 5.
        wait_for(lambda: read_stats(url, ["default"]).queues["default"].ready == 5, what="5 ready")
        assert operator_stats(url, ca_file).queues["default"].ready == 5
        with worker(url, record_url=record_url, env={"EBBTIDE_BROKER_CA_FILE": ca_file}):
            wait_for(lambda: len(rec.lrange(f"done:{tag}", 0, -1)) == 5, what="5 tasks run")
            # A task records itself before its ack: wait for the acks while the worker
            # lives (leaving the block SIGKILLs it, and a lost ack would never come).
            wait_for(
                lambda: operator_stats(url, ca_file).queues["default"].completed_total == 5,
                what="completed_total 5 in the operator's stats",
            )
        assert sorted(map(int, rec.lrange(f"done:{tag}", 0, -1))) == list(range(5))


def assert_refused(url: str, wrong_ca: str, monkeypatch) -> None:
    with producer(url, wrong_ca, monkeypatch) as app:

        @app.task(name="record")
        def record(tag: str, i: int) -> None: ...

        with pytest.raises(ConnectionError) as error:
            record.send("x", 1)
    message = str(error.value)
    assert "\n" not in message
    assert f"did not verify against CA {wrong_ca}" in message, message
    assert "certificate verify failed" in message


@pytest.mark.redis
def test_redis_over_tls(tls_redis, tls_dirs, redis_db, monkeypatch):
    right, wrong = tls_dirs
    assert tls_redis.startswith("rediss://")
    run_round_trip(tls_redis, right.ca_file, redis_db, monkeypatch, "redis-tls")
    assert_refused(tls_redis, wrong.ca_file, monkeypatch)
    with pytest.raises(Exception, match="certificate verify failed"):
        operator_stats(tls_redis, wrong.ca_file)


@pytest.mark.redis
def test_plain_redis_port_is_closed(tls_redis, tls_dirs):
    """TLS only: a plain-text client gets no answer it can use."""
    import redis

    plain = tls_redis.replace("rediss://", "redis://")
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis.from_url(plain, socket_timeout=2, socket_connect_timeout=2).ping()


@pytest.mark.rabbitmq
def test_rabbitmq_over_tls_with_https_management(tls_rabbitmq, tls_dirs, redis_db, monkeypatch):
    right, wrong = tls_dirs
    url = tls_rabbitmq["url"]
    assert url.startswith("amqps://")
    run_round_trip(url, right.ca_file, redis_db, monkeypatch, "rabbitmq-tls")
    # The figures came from the https management API (only it knows message ages/acks).
    from ebbtide.brokers.rabbitmq.topology import parse_options

    assert parse_options(url).management_url.startswith("https://")
    assert_refused(url, wrong.ca_file, monkeypatch)


@pytest.mark.rabbitmq
def test_rabbitmq_management_https_verifies_the_ca(tls_rabbitmq, tls_dirs):
    from ebbtide.brokers.rabbitmq.management import ManagementSession

    right, wrong = tls_dirs
    management = tls_rabbitmq["management_url"]
    trusted = ManagementSession(management, context=BrokerTLS(ca_file=right.ca_file).context())
    assert isinstance(trusted.queues("/"), list)
    trusted.close()
    stranger = ManagementSession(management, context=BrokerTLS(ca_file=wrong.ca_file).context())
    with pytest.raises(Exception, match="certificate verify failed"):
        stranger.queues("/")


@pytest.mark.parametrize(
    "server",
    [
        pytest.param("tls_redis", marks=pytest.mark.redis),
        pytest.param("tls_rabbitmq", marks=pytest.mark.rabbitmq),
    ],
)
def test_the_wake_listeners_verify_with_the_operators_ca(server, request, tls_dirs, monkeypatch):
    """The operator's push wake-up listener reaches a rediss:// or amqps:// broker with
    the CA given to WakeHub.watch (the statistics reads' BrokerTLS), not the system's."""
    from ebbtide_operator.wake import RabbitMQListener, WakeHub

    started = request.getfixturevalue(server)
    url = started if isinstance(started, str) else started["url"]
    tls = BrokerTLS(ca_file=tls_dirs[0].ca_file)

    async def scenario() -> None:
        hub, woken = WakeHub(), asyncio.Event()
        hub.watch("ns/tq", url, "ebbtide", ["wake-tls"], woken.set, tls)
        listener = hub.listener(url, "ebbtide", tls)
        try:
            subscribed = listener.subscribed
            if isinstance(subscribed, asyncio.Event):
                await asyncio.wait_for(subscribed.wait(), 30)
            else:
                assert await asyncio.to_thread(subscribed.wait, 30)
            with producer(url, tls.ca_file, monkeypatch) as app:
                sender = app.task(name="noop", queue="wake-tls")(lambda: None)
                await asyncio.to_thread(sender.send)
            await asyncio.wait_for(woken.wait(), 30)
        finally:
            hub.close()
            if isinstance(listener, RabbitMQListener):
                await asyncio.to_thread(listener.join, 10)

    asyncio.run(scenario())


def test_missing_ca_file_is_named(tmp_path: Path):
    missing = str(tmp_path / "nope.crt")
    with pytest.raises(ValueError, match=f"EBBTIDE_BROKER_CA_FILE={missing}: no such file"):
        BrokerTLS(ca_file=missing).context()
    assert not os.path.exists(missing)
