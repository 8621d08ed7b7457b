"""The Redis client settings and the eviction check (pure parts)."""

from __future__ import annotations

from ebbtide.brokers.redis.broker import TIMEOUTS, evicting_policy


def test_only_policies_that_may_evict_task_keys_are_refused():
    assert evicting_policy({"maxmemory_policy": "allkeys-lru"}) == "allkeys-lru"
    assert evicting_policy({"maxmemory_policy": "allkeys-random"}) == "allkeys-random"
    assert evicting_policy({"maxmemory_policy": "noeviction"}) is None
    assert evicting_policy({"maxmemory_policy": "volatile-lru"}) is None  # TTL keys only
    assert evicting_policy({}) is None  # INFO unavailable: nothing to say


def test_every_connection_has_connect_and_read_timeouts_and_keepalive():
    assert TIMEOUTS["socket_connect_timeout"] > 0 and TIMEOUTS["socket_timeout"] > 0
    assert TIMEOUTS["socket_timeout"] < 10  # a half-open link fails a call well within a lease
    assert TIMEOUTS["socket_keepalive"] is True
