"""The pure parts of push activation: which Redis Cluster node a wake listener tries,
what CLUSTER SHARDS says is online, when a subscription is checked or stale, and how the
WakeHub routes wake-ups (its listeners faked: the real ones are tested against real
servers in tests/integration/operator/test_wake.py)."""

from __future__ import annotations

import pytest
from ebbtide.brokers.tls import BrokerTLS
from ebbtide_operator.wake import (
    CHECK_SECONDS,
    RETRY_SECONDS,
    STALE_SECONDS,
    Liveness,
    WakeHub,
    open_listener,
    retry_delay,
)
from ebbtide_operator.wake_redis import candidates, online_nodes

A, B, C, SEED = ("10.0.0.1", 7000), ("10.0.0.2", 7001), ("10.0.0.3", 7002), ("seed", 6379)


def test_the_first_connect_tries_the_seeds_in_the_urls_order():
    assert candidates([], [SEED, A], None) == [SEED, A]


def test_after_a_failure_the_known_nodes_come_first_and_the_failed_one_last():
    assert candidates([A, B, C], [SEED], A) == [B, C, SEED, A]
    assert candidates([A, B, C], [SEED], C) == [SEED, A, B, C]
    assert candidates([A, B], [A], B) == [A, B]  # a seed that is also known: once


def test_a_last_node_no_longer_known_changes_nothing():
    assert candidates([A, B], [SEED], C) == [A, B, SEED]


def shard(*nodes: dict, slots=(0, 5460)) -> dict:
    return {b"slots": list(slots), b"nodes": list(nodes)}


def node(port: int, health=b"online", endpoint=b"127.0.0.1", **extra) -> dict:
    fields = {b"id": b"x", b"port": port, b"ip": b"127.0.0.1", b"endpoint": endpoint}
    return {**fields, b"role": b"master", b"health": health, **extra}


def test_online_nodes_are_every_primary_and_replica_that_is_online():
    reply = [
        shard(node(7000), node(7003, role=b"replica")),
        shard(node(7001), node(7004, health=b"failed")),
        shard(node(7002, health=b"loading"), slots=()),
    ]
    assert online_nodes(reply, False, "seed") == [
        ("127.0.0.1", 7000),
        ("127.0.0.1", 7003),
        ("127.0.0.1", 7001),
    ]


def test_a_tls_cluster_is_reached_on_its_tls_port():
    reply = [shard({**node(0), b"tls-port": 7100}), shard(node(7001))]
    assert online_nodes(reply, True, "seed") == [("127.0.0.1", 7100), ("127.0.0.1", 7001)]
    assert online_nodes(reply, False, "seed") == [("127.0.0.1", 7001)]  # port 0: none


def test_a_node_without_an_endpoint_is_reached_by_its_ip_or_the_host_asked():
    reply = [shard(node(7000, endpoint=b"?"), {**node(7001, endpoint=b""), b"ip": b""})]
    assert online_nodes(reply, False, "seed") == [("127.0.0.1", 7000), ("seed", 7001)]


def test_older_redis_py_flat_replies_read_the_same():
    flat = [
        [b"slots", [0, 16383], b"nodes", [[b"port", 7000, b"endpoint", b"h", b"health", b"online"]]]
    ]
    assert online_nodes(flat, False, "seed") == [("h", 7000)]
    assert online_nodes(None, False, "seed") == []


def test_a_subscription_is_checked_every_check_seconds_and_stale_after_silence():
    alive = Liveness(heard=100.0, checked=100.0)
    assert not alive.due(100.0 + CHECK_SECONDS - 0.1)
    assert alive.due(100.0 + CHECK_SECONDS)
    assert not alive.due(100.0 + CHECK_SECONDS + 0.1)  # checked just now
    assert not alive.stale(100.0 + STALE_SECONDS - 0.1)
    assert alive.stale(100.0 + STALE_SECONDS)
    alive.heard = 100.0 + STALE_SECONDS  # a PONG came back
    assert not alive.stale(100.0 + STALE_SECONDS + 1)


def test_the_reconnect_backoff_grows_and_stays_at_its_last_step():
    assert [retry_delay(n) for n in range(7)] == [
        *RETRY_SECONDS,
        RETRY_SECONDS[-1],
        RETRY_SECONDS[-1],
    ]


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://",  # no node
        "redis+sentinel://127.0.0.1:26379",  # no service name
        "http://example.invalid/",  # no push for this scheme
    ],
)
def test_a_url_without_push_gets_no_listener(url):
    assert open_listener(url, "ebbtide", lambda _q: None, BrokerTLS()) is None


class FakeListener:
    def __init__(self, url, prefix, deliver, tls) -> None:
        self.url, self.prefix, self.deliver, self.tls = url, prefix, deliver, tls
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True


def fake_hub() -> tuple[WakeHub, list[FakeListener]]:
    made: list[FakeListener] = []

    def listen(url, prefix, deliver, tls):
        made.append(FakeListener(url, prefix, deliver, tls))
        return made[-1]

    return WakeHub(listen), made


def test_one_listener_per_url_prefix_and_tls_routes_to_the_queues_watchers():
    hub, made = fake_hub()
    woken: list[str] = []
    tls = BrokerTLS(ca_file="/ca.crt")
    hub.watch("ns/a", "redis+cluster://h:7000", "p", ["jobs"], lambda: woken.append("a"), tls)
    hub.watch("ns/b", "redis+cluster://h:7000", "p", ["other"], lambda: woken.append("b"), tls)
    hub.watch("ns/c", "redis+cluster://h:7000", "p", ["jobs"], lambda: woken.append("c"))
    assert len(made) == 2 and made[0].tls == tls and made[1].tls == BrokerTLS()
    assert hub.listener("redis+cluster://h:7000", "p", tls) is made[0]
    made[0].deliver("jobs")
    assert woken == ["a"]  # not b (another queue), nor c (another listener)


def test_new_tls_files_move_a_watch_to_a_new_listener_and_stop_the_old():
    hub, made = fake_hub()
    url = "rediss+sentinel://h:26379/svc"
    hub.watch("ns/a", url, "p", ["jobs"], lambda: None, BrokerTLS(ca_file="/old.crt"))
    hub.watch("ns/a", url, "p", ["jobs"], lambda: None, BrokerTLS(ca_file="/new.crt"))
    assert len(made) == 2 and made[0].stopped and not made[1].stopped
    hub.unwatch("ns/a")
    assert made[1].stopped
