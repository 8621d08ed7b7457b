"""Where a Redis wake listener (wake.py) subscribes to `<prefix>:wake`, by URL kind:

    redis://, rediss://, unix://   the one Redis
    redis+cluster://               any one online node: Redis Cluster carries a PUBLISH
                                   (enqueue.lua's, on whichever node holds the queue's
                                   slot) to every node over the cluster bus, so one
                                   subscription hears every queue. The nodes come from
                                   CLUSTER SHARDS (open to the operator's ACL role), read
                                   again at each connect; the node that failed last is
                                   tried last
    redis+sentinel://              the master Sentinel names, asked again at every
                                   check: after a failover the listener moves to the
                                   new master

A plain redis.asyncio connection to one node, not redis-py's cluster or Sentinel pub/sub
(which not every supported redis-py version has, and which would pick the node by the
channel's slot). The clients come from brokers/redis/clients.py, with the URL's login
and the same TLS settings as the statistics reads. Choosing a node and reading CLUSTER
SHARDS are pure (unit-tested).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from ebbtide.brokers.redis import clients
from ebbtide.brokers.tls import BrokerTLS

from ebbtide_operator.broker_io import SOCKET_TIMEOUT_SECONDS

Node = tuple[str, int]

CLIENT_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": SOCKET_TIMEOUT_SECONDS,
    "socket_timeout": SOCKET_TIMEOUT_SECONDS,
    "socket_keepalive": True,
}


class Place(Protocol):
    """Where to subscribe, found again at each (re)connect."""

    async def connect(self) -> tuple[Any, Node | None]:
        """A redis.asyncio client to subscribe on, and its node (None: the URL's Redis)."""
        ...

    async def still_current(self, node: Node | None) -> bool:
        """Whether a live subscription on `node` still hears the queues' wake-ups."""
        ...

    async def aclose(self) -> None: ...


class OneRedis:
    """A single Redis: the URL is the node."""

    def __init__(self, target: clients.Target, tls: BrokerTLS) -> None:
        self.target, self.tls = target, tls

    async def connect(self) -> tuple[Any, Node | None]:
        return clients.async_client(self.target, self.tls, **CLIENT_OPTIONS), None

    async def still_current(self, node: Node | None) -> bool:
        return True

    async def aclose(self) -> None:
        pass


class ClusterNodes:
    """Any online node of a Redis Cluster; the next one when it fails."""

    def __init__(self, target: clients.Target, tls: BrokerTLS) -> None:
        self.target, self.tls = target, tls
        self.known: list[Node] = []  # the online nodes at the last connect
        self.last: Node | None = None  # the node subscribed on last

    async def connect(self) -> tuple[Any, Node | None]:
        for node in candidates(self.known, self.target.nodes, self.last):
            client = clients.async_node_client(self.target, self.tls, *node, **CLIENT_OPTIONS)
            try:
                reply = await client.execute_command("CLUSTER", "SHARDS")
            except Exception:  # noqa: BLE001 - down or not a cluster node: the next one
                await close_quietly(client)
                continue
            self.known = online_nodes(reply, self.target.tls, node[0]) or self.known
            self.last = node
            return client, node
        raise ConnectionError("no Redis Cluster node answered")

    async def still_current(self, node: Node | None) -> bool:
        return True  # every node hears every PUBLISH; a dead one fails the connection

    async def aclose(self) -> None:
        pass


class SentinelMaster:
    """The master that Sentinel names for the URL's service."""

    def __init__(self, target: clients.Target, tls: BrokerTLS) -> None:
        self.target, self.tls = target, tls
        self.sentinel = clients.async_sentinel(target, tls, **CLIENT_OPTIONS)

    async def master(self) -> Node:
        host, port = await self.sentinel.discover_master(self.target.service)
        return str(host), int(port)

    async def connect(self) -> tuple[Any, Node | None]:
        node = await self.master()
        return clients.async_node_client(self.target, self.tls, *node, **CLIENT_OPTIONS), node

    async def still_current(self, node: Node | None) -> bool:
        try:
            return await self.master() == node
        except Exception:  # noqa: BLE001 - no sentinel answers: keep what works
            return True

    async def aclose(self) -> None:
        for sentinel in self.sentinel.sentinels:
            await close_quietly(sentinel)


def place_for(url: str, tls: BrokerTLS) -> Place:
    """The Place for a Redis URL of any kind (clients.BadRedisUrl for a bad one)."""
    target = clients.parse_url(url)
    if target.kind == "cluster":
        return ClusterNodes(target, tls)
    if target.kind == "sentinel":
        return SentinelMaster(target, tls)
    return OneRedis(target, tls)


async def close_quietly(client: Any) -> None:
    with contextlib.suppress(Exception):  # closing a broken connection may fail too
        await client.aclose()


# --- pure ---------------------------------------------------------------------------------


def candidates(known: Sequence[Node], seeds: Iterable[Node], last: Node | None) -> list[Node]:
    """The nodes to try, in order: those seen online at the last connect, then the URL's
    seeds; starting after `last` (it failed, or it would not be reconnecting)."""
    order = list(dict.fromkeys([*known, *seeds]))
    if last in order:
        after = order.index(last) + 1
        order = order[after:] + order[:after]
    return order


def online_nodes(reply: Any, tls: bool, asked: str) -> list[Node]:
    """Every node (primary or replica) that CLUSTER SHARDS calls online, as (host, port)
    to reach it by: its endpoint (or ip; `asked`, the host it was asked on, when the
    node does not know its own), and its TLS port on a TLS cluster. Takes the reply as
    redis-py gives it: a list of maps, or (older versions) of flat key-value lists."""
    nodes: list[Node] = []
    for shard in reply or ():
        for fields in map(_fields, _fields(shard).get("nodes") or ()):
            if fields.get("health") != "online":
                continue
            port = (fields.get("tls-port") if tls else None) or fields.get("port")
            host = fields.get("endpoint") or ""
            if host in ("", "?"):
                host = fields.get("ip") or asked
            if port:
                nodes.append((host, int(port)))
    return list(dict.fromkeys(nodes))


def _fields(item: Any) -> dict[str, Any]:
    """A CLUSTER SHARDS map (or flat key-value list), with str keys and str/int values."""
    if isinstance(item, Mapping):
        pairs = list(item.items())
    else:
        flat = list(item)
        pairs = list(zip(flat[::2], flat[1::2], strict=False))
    return {_text(key): _text(value) for key, value in pairs}


def _text(value: Any) -> Any:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
