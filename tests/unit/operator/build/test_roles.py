"""What each broker role may do: the Redis ACL rules and the RabbitMQ permissions."""

from __future__ import annotations

import re
from importlib.resources import files

import pytest
from ebbtide.brokers.rabbitmq import topology
from ebbtide.brokers.redis import scripts
from ebbtide_operator import naming
from ebbtide_operator.build import roles

DANGEROUS = ("flushall", "flushdb", "config", "debug", "keys", "shutdown", "acl", "scan")
CRED = roles.Credential("ebbtide-worker", "pw")


LUA = files("ebbtide.brokers.redis") / "lua"


def lua_commands(name: str, helpers: bool = True) -> set[str]:
    """Every command a script can call: with common.lua's helpers (what the worker's
    scripts use), or its own file only (enqueue and stats call no helper but now_ms's
    TIME, which they also call themselves)."""
    text = scripts.source(name) if helpers else (LUA / f"{name}.lua").read_text()
    return {c.lower() for c in re.findall(r"redis\.call\('([A-Z]+)'", text)}


@pytest.mark.parametrize("role", naming.ROLES)
def test_no_role_gets_a_dangerous_command_or_a_category(role):
    commands = roles.redis_commands(role)
    assert not {c.split("|")[0] for c in commands} & set(DANGEROUS)
    rules = roles.redis_user_rules(role, CRED, "ebbtide")
    assert rules[:2] == ["reset", "on"] and "-@all" in rules
    assert not [r for r in rules if r.startswith("+@")], "commands are listed one by one"
    channels = [r for r in rules if r.startswith("&")]
    assert "resetchannels" in rules and channels == ["&ebbtide:wake"]  # wake-ups only


def test_each_role_gets_exactly_what_its_scripts_call():
    producer, worker, operator = (set(roles.redis_commands(r)) for r in naming.ROLES)
    assert lua_commands("enqueue", helpers=False) | {"time"} <= producer
    assert not lua_commands("claim") <= producer  # LPOP, ZRANGEBYSCORE...: no claiming
    assert "lpop" not in producer and "zrem" not in producer
    for script in ("claim", "settle", "exchange", "heartbeat", "ratelimit", "enqueue"):
        assert lua_commands(script) <= worker, script
    assert lua_commands("stats", helpers=False) <= operator
    assert {"eval", "evalsha"}.isdisjoint(operator)  # only the read-only variants
    assert {"eval_ro", "evalsha_ro"} <= operator


def test_stats_lua_writes_nothing():
    writes = {"set", "del", "hset", "hdel", "zadd", "zrem", "rpush", "lpush", "lpop", "incr"}
    assert not lua_commands("stats", helpers=False) & writes


def test_keys_are_limited_to_the_prefix_and_the_operator_only_reads():
    assert roles.redis_key_patterns("worker", "jobs") == ("%RW~jobs:*",)
    assert roles.redis_key_patterns("operator", "jobs") == ("%R~jobs:*",)
    producer = roles.redis_key_patterns("producer", "jobs")
    writable = [p for p in producer if p.startswith("%RW~")]
    assert all(p.startswith("%RW~jobs:") for p in writable)
    # Redis asks write access for every key a script declares: enqueue.lua declares the
    # in-flight set and the liveness it only reads; the old layout's registry: read only.
    assert set(producer) - set(writable) == {"%R~jobs:queues"}
    assert "%RW~jobs:q:*:claims" not in producer and "%RW~jobs:q:*:epoch" not in producer
    with pytest.raises(ValueError, match="unknown broker role 'admin'"):
        roles.redis_key_patterns("admin", "jobs")


def test_the_acl_file_has_the_admin_then_one_user_per_role_and_no_password():
    creds = {r: roles.Credential(naming.role_username(r), f"secret-{r}") for r in naming.ROLES}
    text = roles.redis_acl_file("admin-secret", creds, "ebbtide")
    assert not any(f"secret-{r}" in text for r in naming.ROLES) and "admin-secret" not in text
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["user", "default"]
    assert [line.split()[1] for line in lines[1:]] == [
        "ebbtide-producer",
        "ebbtide-worker",
        "ebbtide-operator",
    ]
    assert roles.redis_password_hash("pw") == (
        "#30c952fab122c3f9759f02a6d95c3758b246b4fee239957b2d4fee46e26170c4"
    )


def _matches(regex: str, name: str) -> bool:
    return re.match(regex, name) is not None  # RabbitMQ's permission regexes are re.match


NAMES = {
    "ready": topology.ready_queue("ebbtide", "emails.eu"),
    "wait": topology.delay_queue("ebbtide", "emails.eu", 1300),
    "dead": topology.dead_queue("ebbtide", "emails.eu"),
    "lost": topology.lost_queue("ebbtide", "emails.eu"),
    "heartbeat": topology.worker_queue("ebbtide", "w-1"),
    "rate": "ebbtide.rate.send.10.1000",
    "wake": topology.wake_exchange("ebbtide"),
    "server-named": "amq.gen-JzTY20BRgKO-HjmUJj0wLg",
    "other app": "billing.emails",
}


def test_the_producer_declares_and_reads_only_delay_queues_and_writes_the_default_exchange():
    p = roles.rabbitmq_permissions("producer", "ebbtide")
    readable = {kind for kind, name in NAMES.items() if _matches(p["read"], name)}
    configurable = {kind for kind, name in NAMES.items() if _matches(p["configure"], name)}
    writable = {kind for kind, name in NAMES.items() if _matches(p["write"], name)}
    assert readable == {"wait"}  # never a ready task: it cannot claim
    assert configurable == {"wait", "wake"} and writable == {"wake"}
    assert _matches(p["write"], "amq.default")
    assert roles.rabbitmq_tags("producer") == []


def test_the_worker_owns_its_prefix_and_the_operator_reads_heartbeats_only():
    w = roles.rabbitmq_permissions("worker", "ebbtide")
    for kind, name in NAMES.items():
        expected = kind not in ("other app", "server-named")
        assert _matches(w["configure"], name) is expected, kind
        assert _matches(w["read"], name) is expected, kind
    assert _matches(w["write"], "amq.default")
    o = roles.rabbitmq_permissions("operator", "ebbtide")
    readable = {k for k, n in NAMES.items() if _matches(o["read"], n)}
    assert readable == {"heartbeat", "wake", "server-named"}  # no task queue at all
    assert {k for k, n in NAMES.items() if _matches(o["configure"], n)} == {"wake", "server-named"}
    assert {k for k, n in NAMES.items() if _matches(o["write"], n)} == {"server-named"}
    assert not _matches(o["write"], "amq.default")  # it cannot publish
    assert roles.rabbitmq_tags("operator") == ["monitoring"]
