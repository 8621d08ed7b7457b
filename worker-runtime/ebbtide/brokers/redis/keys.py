"""The key layout (pure): which Redis keys hold a queue, and which slot they hash to.

Every key of one queue carries the queue's name as a hash tag (`P:q:{emails}:msgs`), so
on a Redis Cluster the whole queue lives in one slot and each script call, which touches
one queue or several queues of one slot, is legal there. The registry (known queues,
worker heartbeats) has the prefix as its tag (`P:r:{P}:workers`). The same layout is used
on a single Redis, so one code path serves both; see docs/runtime.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from redis.crc import key_slot

from ...message import MAX_PRIORITY

# The per-queue block of KEYS every script receives, in this order (common.lua reads it
# with queue_at): ready:0..9 first, then these.
QUEUE_PARTS = (
    *(f"ready:{p}" for p in range(MAX_PRIORITY + 1)),
    "inflight",
    "claims",
    "lost",
    "delayed",
    "dead",
    "msgs",
    "counters",
    "alive",
    "epoch",
    "seq",
)
QUEUE_KEYS = len(QUEUE_PARTS)  # keys per queue block (common.lua's QK)
# What enqueue.lua declares (in this order): only what it touches, since Redis asks the
# producer's ACL user for write access to every declared key.
ENQUEUE_PARTS = (*QUEUE_PARTS[:10], "inflight", "delayed", "msgs", "counters", "alive")
OLD_GLOBAL = ("queues", "workers", "alive", "epoch", "seq")  # the layout before hash tags


def check_prefix(prefix: str) -> str:
    """A prefix with a brace would move the hash tag out of the queue name."""
    if not prefix or "{" in prefix or "}" in prefix or any(c.isspace() for c in prefix):
        raise ValueError(
            f"bad key prefix {prefix!r}: it must be non-empty, without braces or spaces "
            "(keys carry the queue name as a Redis Cluster hash tag)"
        )
    return prefix


@dataclass(frozen=True)
class Layout:
    """Key names for one prefix. `clustered`: calls are grouped by slot (on a single
    Redis every key is local, so all queues go in one call)."""

    prefix: str
    clustered: bool = False

    def queue_base(self, queue: str) -> str:
        return f"{self.prefix}:q:{{{queue}}}"

    def queue_block(self, queue: str) -> list[str]:
        base = self.queue_base(queue)
        return [f"{base}:{part}" for part in QUEUE_PARTS]

    def enqueue_block(self, queue: str) -> list[str]:
        base = self.queue_base(queue)
        return [f"{base}:{part}" for part in ENQUEUE_PARTS]

    def key(self, queue: str, part: str) -> str:
        return f"{self.queue_base(queue)}:{part}"

    def uniq(self, queue: str, key: str) -> str:
        return f"{self.queue_base(queue)}:uniq:{key}"

    @property
    def registry(self) -> tuple[str, str, str]:
        """(queue names SET, worker heartbeats ZSET, worker infos HASH): one slot."""
        base = f"{self.prefix}:r:{{{self.prefix}}}"
        return (f"{base}:queues", f"{base}:workers", f"{base}:info")

    def rate(self, name: str) -> tuple[str, str]:
        base = f"{self.prefix}:rate:{{{name}}}"
        return (base, f"{base}:seq")

    @property
    def wake_channel(self) -> str:
        return f"{self.prefix}:wake"

    @property
    def old_queues(self) -> str:
        """The layout before hash tags kept its queue names here: its presence means
        tasks may still sit under the old names (see migrate.py)."""
        return f"{self.prefix}:queues"

    def old_queue_key(self, queue: str, part: str) -> str:
        return f"{self.prefix}:q:{queue}:{part}"

    def group(self, queue: str) -> int:
        """The slot a queue's calls go to (-1 for the registry); 0 for every queue on a
        single Redis, where any keys may share a call."""
        return key_slot(self.queue_base(queue).encode()) if self.clustered else 0

    @property
    def registry_group(self) -> int:
        return key_slot(self.registry[0].encode()) if self.clustered else 0

    def by_group(self, queues: Iterable[str]) -> dict[int, list[str]]:
        """Queues by the call they go in, each group in first-seen order, no duplicates."""
        groups: dict[int, list[str]] = {}
        for queue in dict.fromkeys(queues):
            groups.setdefault(self.group(queue), []).append(queue)
        return groups


def hash_tag(key: str) -> str:
    """What Redis Cluster hashes for `key`: the text inside the first non-empty {...}."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key
