"""The key layout: one queue is one slot, and calls group by slot on a cluster only."""

from __future__ import annotations

import pytest
from ebbtide.brokers.base import Delivery, Settlement
from ebbtide.brokers.redis import calls
from ebbtide.brokers.redis.clients import BadRedisUrl, parse_url
from ebbtide.brokers.redis.keys import QUEUE_KEYS, Layout, check_prefix, hash_tag
from ebbtide.brokers.redis.wire import group_want
from ebbtide.lifecycle import Outcome
from redis.crc import key_slot


def test_every_key_of_a_queue_hashes_to_the_queues_slot():
    layout = Layout("ebbtide", clustered=True)
    keys = [
        *layout.queue_block("emails"),
        layout.uniq("emails", "k:1"),
        *layout.enqueue_block("emails"),
    ]
    assert len(layout.queue_block("emails")) == QUEUE_KEYS
    assert {hash_tag(k) for k in keys} == {"emails"}
    assert {key_slot(k.encode()) for k in keys} == {layout.group("emails")}
    assert {key_slot(k.encode()) for k in layout.registry} == {layout.registry_group}
    assert len({key_slot(k.encode()) for k in layout.rate("send")}) == 1
    assert all(k.startswith("ebbtide:") for k in [*keys, *layout.registry])  # ACL patterns


def test_a_single_redis_puts_every_queue_in_one_call_and_a_cluster_splits_by_slot():
    plan = [("a", 1), ("b", 1), ("c", 0)]
    assert len(calls.split_work(Layout("p"), plan, [])) == 1
    cluster = Layout("p", clustered=True)
    slots = {q: cluster.group(q) for q, _ in plan}
    groups = calls.split_work(
        cluster, plan, [Settlement(Outcome.ACK, Delivery("z", "1|0|1.x", ""))]
    )
    assert len(groups) == len(set(slots.values()) | {cluster.group("z")})
    assert [q for g in groups for q, _ in g.plan] == ["a", "b", "c"]  # plan order kept
    assert groups[-1].settlements and not groups[-1].plan  # settle-only group last


def test_group_want_keeps_room_for_later_quotas():
    assert group_want(10, [0, 0], 0) == 10  # strict: everything to the first
    assert group_want(10, [6, 4], 0) == 6  # weighted: its quota, room for the next
    assert group_want(4, [6, 4], 0) == 4  # quotas above n: its own quota, capped
    assert group_want(4, [6, 4], 1) == 4


@pytest.mark.parametrize("prefix", ["", "a{b", "x}", "a b"])
def test_a_prefix_that_would_move_the_hash_tag_is_refused(prefix):
    with pytest.raises(ValueError, match="bad key prefix"):
        check_prefix(prefix)


def test_cluster_and_sentinel_urls_parse_and_bad_ones_name_the_part():
    t = parse_url("rediss+cluster://u:p%40ss@h1:7000,h2:7001/0")
    assert (t.kind, t.tls, t.nodes, t.username, t.password) == (
        "cluster",
        True,
        (("h1", 7000), ("h2", 7001)),
        "u",
        "p@ss",
    )
    s = parse_url("redis+sentinel://:pw@s1:26379,s2/mymaster/2?sentinel_password=sp")
    assert (s.kind, s.service, s.db, s.password, s.sentinel_password) == (
        "sentinel",
        "mymaster",
        2,
        "pw",
        "sp",
    )
    assert s.nodes == (("s1", 26379), ("s2", 26379)) and s.min_replicas == 1
    assert parse_url("redis+sentinel://s:1/m?min_replicas=0").min_replicas == 0
    assert parse_url("redis://h:1/0").kind == "single"
    for url, part in [
        ("redis+cluster://h:1/3", "bad database"),
        ("redis+cluster://", "no host:port"),
        ("redis+cluster://h:x", "bad node"),
        ("redis+sentinel://h:1", "no service name"),
        ("redis+sentinel://h:1/m/x", "bad database 'x'"),
        ("redis+sentinel://h:1/m?foo=1", "unknown parameter 'foo'"),
        ("redis+sentinel://h:1/m?min_replicas=x", "bad min_replicas 'x'"),
        ("redis+nope://h", "unsupported Redis URL scheme"),
    ]:
        with pytest.raises(BadRedisUrl, match=part):
            parse_url(url)
