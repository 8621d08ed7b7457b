"""The Lua sources (lua/), each with the shared helpers prepended (Redis Lua has no include)."""

from __future__ import annotations

import hashlib
from functools import cache
from importlib.resources import files

NAMES = ("enqueue", "claim", "settle", "exchange", "heartbeat", "stats", "dlq", "ratelimit")


@cache
def source(name: str) -> str:
    lua = files(__package__) / "lua"
    return (lua / "common.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


@cache
def sha(name: str) -> str:
    """The SHA1 Redis caches the script under (EVALSHA, EVALSHA_RO)."""
    return hashlib.sha1(source(name).encode()).hexdigest()  # noqa: S324 - Redis's own id
