"""What each generated broker identity may do: Redis ACL rules and RabbitMQ permissions.

A managed broker has three role identities plus its admin (the `<name>-broker` Secret):

  producer  enqueue only
  worker    claim, settle, heartbeat, retries, the DLQ, rate limits (and enqueue: a task
            may send tasks)
  operator  read the statistics, nothing else

Redis runs every state change as a Lua script, so the ACL cannot name scripts: it names
the commands each role's scripts call (lua/*.lua) and the keys they touch, and any other
script the identity sends is refused at its first foreign command. RabbitMQ's
permissions are per vhost, as configure/write/read regexes over queue and exchange names
(worker-runtime's topology.py). Pure: no I/O; the Secrets and files are built from this.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from ebbtide_operator import naming


@dataclass(frozen=True)
class Credential:
    """One identity: the broker user name and its password."""

    username: str
    password: str


# Connection housekeeping every role needs (redis-py's PING health checks, INFO memory:
# the producer refuses a Redis that may evict tasks, the operator reports it).
# On a Redis Cluster the clients also read the slot map and the command table (the same
# rules then serve an external cluster's nodes).
_REDIS_BASE = ("ping", "info", "cluster|slots", "cluster|shards", "command")
# Scripts are sent by EVALSHA, loaded on a NOSCRIPT reply (redis-py's Script objects).
_REDIS_SCRIPTING = ("eval", "evalsha", "script|load", "script|exists")
# The commands enqueue.lua calls (PUBLISH: the operator's wake-up, on `<prefix>:wake`),
# the registry's SADD beside it, and EXISTS (the old key layout's check, at connect).
_REDIS_ENQUEUE = (
    "exists",
    "time",
    "sadd",
    "llen",
    "zcard",
    "zcount",
    "set",
    "get",
    "hset",
    "zadd",
    "rpush",
    "hincrby",
    "publish",
)
# claim.lua, settle.lua, exchange.lua, heartbeat.lua, ratelimit.lua (common.lua's
# helpers included), on top of enqueue's.
_REDIS_WORK = (
    "zrangebyscore",
    "zrem",
    "zscore",
    "zrange",
    "zremrangebyscore",
    "smembers",
    "hget",
    "hgetall",
    "hmget",
    "hdel",
    "hexists",
    "lpush",
    "lpop",
    "lindex",
    "zcount",
    "incr",
    "incrby",
    "del",
    "pexpire",
)
# stats.lua, run by EVAL_RO/EVALSHA_RO only, and only reads.
_REDIS_STATS = (
    "time",
    "smembers",
    "llen",
    "lindex",
    "zcount",
    "zrange",
    "zrangebyscore",
    "zcard",
    "hmget",
    "get",
)


def redis_commands(role: str) -> tuple[str, ...]:
    """The commands a role may run (directly or from a script), sorted, no duplicates."""
    if role == "producer":
        commands = _REDIS_BASE + _REDIS_SCRIPTING + _REDIS_ENQUEUE
    elif role == "worker":
        commands = _REDIS_BASE + _REDIS_SCRIPTING + _REDIS_ENQUEUE + _REDIS_WORK
    elif role == "operator":
        # SUBSCRIBE: the wake-ups (wake.py), on `<prefix>:wake` only.
        commands = (*_REDIS_BASE, "eval_ro", "evalsha_ro", "subscribe", "unsubscribe")
        commands += _REDIS_STATS
    else:
        raise ValueError(f"unknown broker role {role!r}: one of {', '.join(naming.ROLES)}")
    return tuple(sorted(set(commands)))


def redis_key_patterns(role: str, prefix: str) -> tuple[str, ...]:
    """Key selectors: the producer writes only a queue's ready lists, payloads, delayed
    set, counters and unique keys (and the queue registry), and the two keys enqueue.lua
    only reads (the in-flight set and the workers' liveness: whether to wake the
    operator), since Redis asks write access for every key a script declares; the worker
    owns everything under the prefix; the operator reads everything under it and writes
    nothing."""
    if role == "producer":
        q = f"{prefix}:q:*"
        keys = (
            f"{prefix}:r:{{{prefix}}}:queues",
            f"{q}:ready:*",
            f"{q}:msgs",
            f"{q}:delayed",
            f"{q}:counters",
            f"{q}:uniq:*",
            f"{q}:inflight",
            f"{q}:alive",
        )
        # Read only: whether the old key layout is still there (brokers/redis/migrate.py).
        seen = (f"{prefix}:queues",)
        return tuple(f"%RW~{key}" for key in keys) + tuple(f"%R~{key}" for key in seen)
    if role == "worker":
        return (f"%RW~{prefix}:*",)
    if role == "operator":
        return (f"%R~{prefix}:*",)
    raise ValueError(f"unknown broker role {role!r}: one of {', '.join(naming.ROLES)}")


def redis_channels(prefix: str) -> tuple[str, ...]:
    """The one pub/sub channel any role may use: the wake-ups enqueue.lua publishes."""
    return (f"&{prefix}:wake",)


def redis_password_hash(password: str) -> str:
    """The ACL's `#<sha256 hex>` form: the file never holds a password."""
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def redis_user_rules(role: str, credential: Credential, prefix: str) -> list[str]:
    """`ACL SETUSER <user> ...` arguments (and the ACL file's `user` line): starts from
    `reset`, so no earlier right survives; no pub/sub channel but `<prefix>:wake`; no
    FLUSH*, CONFIG, DEBUG, KEYS, SHUTDOWN or ACL, since only the listed commands are
    allowed."""
    return [
        "reset",
        "on",
        redis_password_hash(credential.password),
        "resetchannels",
        *redis_channels(prefix),
        *redis_key_patterns(role, prefix),
        "-@all",
        *(f"+{command}" for command in redis_commands(role)),
    ]


def redis_admin_rules(password: str) -> list[str]:
    """The `default` user: the admin identity of the `<name>-broker` Secret, password only
    (it also serves `ebbtide dlq replay/purge` and the operator's live rotations)."""
    return ["reset", "on", redis_password_hash(password), "~*", "&*", "+@all"]


def redis_acl_file(admin_password: str, credentials: Mapping[str, Credential], prefix: str) -> str:
    """The `aclfile` redis-server loads at boot: the admin and one user per role."""
    lines = ["user default " + " ".join(redis_admin_rules(admin_password))]
    for role in naming.ROLES:
        credential = credentials[role]
        rules = redis_user_rules(role, credential, prefix)
        lines.append(f"user {credential.username} " + " ".join(rules))
    return "\n".join(lines) + "\n"


# --- RabbitMQ ------------------------------------------------------------------------------


def rabbitmq_permissions(role: str, prefix: str) -> dict[str, str]:
    """configure/write/read regexes on the TaskQueue's vhost.

    Publishing goes through the default exchange (write on `amq.default`). RabbitMQ asks
    whoever declares a queue with a dead-letter exchange for read on that queue too, so
    the producer never declares the ready queue: the broker's definitions pre-declare
    every spec queue's ready, dead and lost queues, and the producer's URL says
    `declare=passive` (it only checks they exist). It still declares the `.wait.<ms>`
    delay queues (one per delay bucket, not known in advance), which dead-letter into the
    ready queue: configure and read on those only, so a producer can never take a ready
    task. Producers also publish wake-ups to the fanout exchange `<prefix>.wake` (which
    they declare). The operator reads (basic.get, requeued) the workers' heartbeat
    queues, has the `monitoring` tag for the management API (its passive declares need no
    right), and listens for wake-ups: it declares the wake exchange and a server-named
    exclusive queue (`amq.gen-...`, no other connection can use it) bound to it."""
    p = prefix  # spec.keyPrefix: [a-z0-9_-] only, nothing to escape
    if role == "producer":
        wait = rf"^{p}\.(?!worker\.|rate\.).+\.wait\.[0-9]+$"
        wake = rf"^{p}\.wake$"
        return {
            "configure": f"({wait}|{wake})",
            "write": rf"^(amq\.default|{p}\.wake)$",
            "read": wait,
        }
    if role == "worker":
        everything = rf"^{p}\..+$"
        return {
            "configure": everything,
            "write": rf"^(amq\.default|{p}\..+)$",
            "read": everything,
        }
    if role == "operator":
        own = r"amq\.gen-.+"  # its exclusive, server-named wake queue
        return {
            "configure": rf"^({own}|{p}\.wake)$",
            "write": rf"^{own}$",  # binding that queue, nothing else
            "read": rf"^({own}|{p}\.wake|{p}\.worker\..+)$",
        }
    raise ValueError(f"unknown broker role {role!r}: one of {', '.join(naming.ROLES)}")


def rabbitmq_tags(role: str) -> list[str]:
    """The operator reads the management API's queue list (`monitoring`); the others need
    no HTTP API at all (the worker's stats fallback is AMQP only)."""
    return ["monitoring"] if role == "operator" else []
