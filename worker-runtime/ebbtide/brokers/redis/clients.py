"""Redis clients for the three URL kinds, sync and asyncio (one place for producer,
worker and the operator's stats reader):

    redis://[user:pw@]host:port/db, rediss://..., unix://...   one Redis
    redis+cluster://[user:pw@]host:port[,host:port...][/0]     a Redis Cluster (seeds)
    redis+sentinel://[user:pw@]host:port[,host:port...]/service[/db]
        a master found through Sentinel; `?sentinel_username=&sentinel_password=` when
        the sentinels ask for their own login (the URL's user and password are the
        master's); `?min_replicas=N` (default 1, 0 = off): a send returns once N
        replicas hold it (WAIT), else it raises NotReplicated

`rediss+cluster://` and `rediss+sentinel://` use TLS (to the sentinels too), verified
like rediss://. Parsing is pure (parse_url); a bad URL is one error naming the part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

from ...errors import UnsupportedBroker
from ..base import redact
from ..tls import BrokerTLS

SINGLE_SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SCHEMES = SINGLE_SCHEMES + CLUSTER_SCHEMES + SENTINEL_SCHEMES
TCP_ONLY_OPTIONS = ("socket_keepalive", "socket_keepalive_options")


class BadRedisUrl(UnsupportedBroker):
    """A redis+cluster:// or redis+sentinel:// URL that cannot be used; names the part."""


@dataclass(frozen=True)
class Target:
    """Where a Redis URL points."""

    kind: str  # "single" | "cluster" | "sentinel"
    url: str
    tls: bool = False
    nodes: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = None
    service: str = ""
    db: int = 0
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    min_replicas: int = 1  # Sentinel: replicas that must hold a sent task (WAIT)

    @property
    def clustered(self) -> bool:
        return self.kind == "cluster"


def _nodes(url: str, netloc: str) -> tuple[tuple[str, int], ...]:
    hosts = netloc.rpartition("@")[2]
    if not hosts:
        raise BadRedisUrl(f"{redact(url)}: no host:port after the scheme")
    nodes = []
    for part in hosts.split(","):
        host, sep, port = part.rpartition(":")
        if not sep:
            host, port = part, "6379" if "cluster" in url.partition(":")[0] else "26379"
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise BadRedisUrl(f"{redact(url)}: bad node {part!r}: expected host:port")
        nodes.append((host, int(port)))
    return tuple(nodes)


def _credentials(netloc: str) -> tuple[str | None, str | None]:
    userinfo, at, _ = netloc.rpartition("@")
    if not at:
        return None, None
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None), (unquote(password) if colon else None)


def parse_url(url: str) -> Target:
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise BadRedisUrl(
            f"unsupported Redis URL scheme {scheme!r} in {redact(url)!r}: use "
            + ", ".join(f"{s}://" for s in SCHEMES)
        )
    if scheme in SINGLE_SCHEMES:
        return Target("single", url, tls=scheme == "rediss")
    netloc, _, tail = rest.partition("/")
    path, _, query = tail.partition("?")
    username, password = _credentials(netloc)
    nodes = _nodes(url, netloc)
    tls = scheme.startswith("rediss")
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    if scheme in CLUSTER_SCHEMES:
        if path.strip("/") not in ("", "0"):
            raise BadRedisUrl(
                f"{redact(url)}: bad database {path!r}: a Redis Cluster has only database 0"
            )
        if params:
            raise BadRedisUrl(f"{redact(url)}: unknown parameter {sorted(params)[0]!r}")
        return Target("cluster", url, tls, nodes, username, password)
    service, _, db = path.partition("/")
    if not service:
        raise BadRedisUrl(
            f"{redact(url)}: no service name: expected redis+sentinel://host:port/<service>[/db]"
        )
    db = db.strip("/") or "0"
    if not db.isdigit():
        raise BadRedisUrl(f"{redact(url)}: bad database {db!r}: expected a number")
    unknown = set(params) - {"sentinel_username", "sentinel_password", "min_replicas"}
    if unknown:
        raise BadRedisUrl(f"{redact(url)}: unknown parameter {sorted(unknown)[0]!r}")
    replicas = params.get("min_replicas", "1")
    if not replicas.isdigit():
        raise BadRedisUrl(f"{redact(url)}: bad min_replicas {replicas!r}: expected a number")
    return Target(
        "sentinel", url, tls, nodes, username, password, unquote(service), int(db),
        params.get("sentinel_username") or None, params.get("sentinel_password") or None,
        int(replicas),
    )  # fmt: skip


def _tls(target: Target, tls: BrokerTLS) -> dict[str, Any]:
    return {"ssl": True, **tls.redis_kwargs()} if target.tls else {}


def sync_client(target: Target, tls: BrokerTLS, **options: Any) -> Any:
    """A redis-py client for `target` (`options`: decode_responses, timeouts...)."""
    import redis
    from redis.cluster import ClusterNode, RedisCluster
    from redis.sentinel import Sentinel

    return _client(target, tls, options, redis.Redis, RedisCluster, ClusterNode, Sentinel)


def async_client(target: Target, tls: BrokerTLS, **options: Any) -> Any:
    """The redis.asyncio counterpart of sync_client."""
    import redis.asyncio as aredis
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from redis.asyncio.sentinel import Sentinel

    return _client(target, tls, options, aredis.Redis, RedisCluster, ClusterNode, Sentinel)


def _client(
    target: Target,
    tls: BrokerTLS,
    options: dict[str, Any],
    redis_cls: Any,
    cluster_cls: Any,
    node_cls: Any,
    sentinel_cls: Any,
) -> Any:
    """One builder for both flavours: redis-py's sync and asyncio classes take the same
    arguments, so only the classes passed in differ."""
    if target.kind == "single":
        extra = tls.redis_kwargs() if target.tls else {}
        if target.url.lower().startswith("unix:"):  # TCP options: unix sockets refuse them
            options = {k: v for k, v in options.items() if k not in TCP_ONLY_OPTIONS}
        return redis_cls.from_url(target.url, **options, **extra)
    if target.kind == "cluster":
        options = {k: v for k, v in options.items() if k != "health_check_interval"}
        return cluster_cls(
            startup_nodes=[node_cls(h, p) for h, p in target.nodes],
            username=target.username,
            password=target.password,
            **options,
            **_tls(target, tls),
        )
    return _sentinel(target, tls, options, sentinel_cls).master_for(
        target.service,
        username=target.username,
        password=target.password,
        db=target.db,
        **_tls(target, tls),
    )


def async_sentinel(target: Target, tls: BrokerTLS, **options: Any) -> Any:
    """The redis.asyncio Sentinel of a redis+sentinel:// target (its sentinels' login and
    TLS from the URL); `options` go to the master's connections too."""
    from redis.asyncio.sentinel import Sentinel

    return _sentinel(target, tls, options, Sentinel)


def _sentinel(target: Target, tls: BrokerTLS, options: dict[str, Any], sentinel_cls: Any) -> Any:
    return sentinel_cls(
        list(target.nodes), sentinel_kwargs=_sentinel_kwargs(target, tls, options), **options
    )


def async_node_client(target: Target, tls: BrokerTLS, host: str, port: int, **options: Any) -> Any:
    """A plain redis.asyncio client for one node of a cluster or sentinel target (the
    URL's login, database and TLS): the operator's wake listener subscribes on one node,
    which redis-py's cluster and Sentinel clients do not offer in every version."""
    import redis.asyncio as aredis

    return aredis.Redis(
        host=host,
        port=port,
        username=target.username,
        password=target.password,
        db=target.db,
        **options,
        **_tls(target, tls),
    )


def _sentinel_kwargs(target: Target, tls: BrokerTLS, options: dict[str, Any]) -> dict[str, Any]:
    kwargs = {k: v for k, v in options.items() if k.startswith("socket_")}
    if target.sentinel_password:
        kwargs["password"] = target.sentinel_password
        kwargs["username"] = target.sentinel_username
    return kwargs | _tls(target, tls)


def nodes_of(client: Any) -> list[Any]:
    """The clients of every primary behind `client` (one for a single Redis or a
    Sentinel master): the maxmemory-policy is checked on each."""
    from redis.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        return [client.get_redis_connection(node) for node in client.get_primaries()]
    return [client]
