"""Moving a prefix's tasks from the key layout before hash tags (`P:q:emails:msgs`,
global `P:queues`, `P:epoch`, `P:alive`) to the current one (`P:q:{emails}:msgs`).

Producers and workers refuse to start on a Redis that still holds the old layout
(OldKeyLayout), so no task is silently left behind under old names; `ebbtide migrate`
moves everything, with every worker stopped. The old layout only ever ran on a single
Redis (its scripts were not cluster-legal), but the move is DUMP/RESTORE per key, which
works across slots as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...errors import EbbtideError
from .keys import QUEUE_PARTS, Layout


class OldKeyLayout(EbbtideError):
    """Tasks of this prefix may still sit under the old key names."""

    def __init__(self, prefix: str, where: str) -> None:
        self.prefix = prefix
        super().__init__(
            f"Redis at {where} holds prefix {prefix!r} in the key layout of Ebbtide before "
            f"Redis Cluster support ({prefix}:queues exists): stop the old workers and run "
            f"`ebbtide migrate --broker-url <url> --key-prefix {prefix}` to move its tasks"
        )


# Per-queue parts moved one to one (uniq:<key> keys are found by SCAN); epoch and alive
# were global, seq is dropped (it only numbered malformed entries).
_MOVED = tuple(p for p in QUEUE_PARTS if p not in ("alive", "epoch", "seq"))


@dataclass
class Migration:
    queues: list[str] = field(default_factory=list)
    keys: int = 0  # keys moved


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _merge(client: Any, old: str, new: str) -> None:
    """`old` into an existing `new` (something already wrote the new name): old items
    first for lists (they are older), and both sides' members and fields."""
    kind = client.type(old)
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if kind == "list":
        items = client.lrange(old, 0, -1)
        if items:
            client.lpush(new, *reversed(items))
    elif kind == "zset":
        members = client.zrange(old, 0, -1, withscores=True)
        if members:
            client.zadd(new, dict(members))
    elif kind == "hash":
        for name, value in client.hgetall(old).items():
            client.hsetnx(new, name, value)
    elif kind == "set":
        members = client.smembers(old)
        if members:
            client.sadd(new, *members)
    client.delete(old)


def _move(client: Any, old: str, new: str) -> bool:
    blob = client.dump(old)
    if blob is None:
        return False
    if client.exists(new):
        _merge(client, old, new)
        return True
    ttl = max(0, client.pttl(old))
    client.restore(new, ttl, blob)
    client.delete(old)
    return True


def migrate(client: Any, prefix: str) -> Migration:
    """Move every queue named in the old `P:queues` into the current layout, set each
    queue's claim-token counter to the old global one (a handle a stale worker still
    holds can never be issued again: fencing holds across the move), copy the workers'
    liveness into each queue (a lost claim still comes back early), and drop the old
    registry last: run again after an interruption, it picks up where it stopped."""
    layout = Layout(prefix)
    done = Migration()
    names = sorted(_text(q) for q in client.smembers(layout.old_queues))
    epoch = int(client.get(f"{prefix}:epoch") or 0)
    alive = client.zrange(f"{prefix}:alive", 0, -1, withscores=True)
    for queue in names:
        for part in _MOVED:
            done.keys += _move(client, layout.old_queue_key(queue, part), layout.key(queue, part))
        pattern = _glob_escape(layout.old_queue_key(queue, "uniq:")) + "*"
        for key in client.scan_iter(match=pattern, count=500):
            key = _text(key)
            tail = key[len(layout.old_queue_key(queue, "uniq:")) :]
            done.keys += _move(client, key, layout.uniq(queue, tail))
        if epoch:
            current = int(client.get(layout.key(queue, "epoch")) or 0)
            if current < epoch:
                client.set(layout.key(queue, "epoch"), epoch)
        if alive:
            client.zadd(layout.key(queue, "alive"), dict(alive))
        client.sadd(layout.registry[0], queue)
        done.queues.append(queue)
    # One key per DEL: a cluster refuses a DEL across slots. (The old P:worker:<id> infos
    # expire on their own.)
    for name in ("epoch", "alive", "seq", "workers"):
        client.delete(f"{prefix}:{name}")
    client.delete(layout.old_queues)
    return done


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
