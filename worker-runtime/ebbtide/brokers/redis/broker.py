"""Redis broker: every state change is one Lua script, so it is atomic and one round trip.

The synchronous client serves producers and admin commands; the asyncio client serves
the worker. Both are created lazily, so importing this module opens no connection.
Argument and reply framing is in wire.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import redis

from ...errors import BrokerEvicts, PartiallyEnqueued, PermissionDenied
from ...message import replayed_payload
from ..base import BrokerStats, DeadTask, Delivery, Outgoing, Plan, Settlement, redact
from ..tls import BrokerTLS, explain, is_tls_url
from . import scripts, wire


class RedisUnreachable(ConnectionError, redis.exceptions.ConnectionError):
    """`send()` cannot reach Redis: the built-in ConnectionError, as on RabbitMQ, and
    still the redis-py one that callers may already catch."""


# Every connection: a connect and a read timeout, and TCP keepalive, so a half-open
# connection (a blackholed link, a vanished node) fails a call within seconds instead
# of hanging heartbeats for the kernel's ~15 minutes. Every script is short.
TIMEOUTS: dict[str, Any] = {
    "socket_connect_timeout": 5.0,
    "socket_timeout": 5.0,
    "socket_keepalive": True,
    "health_check_interval": 15,
}


def evicting_policy(info: dict[str, Any]) -> str | None:
    """The maxmemory-policy from `INFO memory` when it may evict queued tasks (any
    `allkeys-*`; `volatile-*` only evicts keys with a TTL, which tasks never have)."""
    policy = str(info.get("maxmemory_policy", ""))
    return policy if policy.startswith("allkeys-") else None


# How Redis words an ACL refusal: `NOPERM ...` for a command sent directly, and (Redis
# 7.0) `ERR The user executing the script can't run this command...` / `...can't access
# at least one of the keys...` for one a script calls.
_REFUSALS = ("noperm", "user executing the script can't", "no permissions to")


def is_refusal(error: BaseException) -> bool:
    return isinstance(error, redis.exceptions.ResponseError) and any(
        marker in str(error).lower() for marker in _REFUSALS
    )


def _user_of(url: str) -> str:
    return unquote(urlsplit(url).username or "") or "default"


class RedisBroker:
    """The Broker protocol, plus the Exchanging capability (settle and claim at once)."""

    def __init__(self, url: str, prefix: str = "ebbtide", tls: BrokerTLS | None = None) -> None:
        self.url = url
        self.prefix = prefix
        self.tls = BrokerTLS.from_env() if tls is None else tls  # rediss:// verification
        self._sync: redis.Redis | None = None
        self._owns_sync = True  # False: the caller's client, left open by close()
        self._sync_scripts: dict[str, Any] = {}
        self._async: Any = None
        self._async_scripts: dict[str, Any] = {}
        self._policy_checked = False  # INFO memory read once per connection
        self.worker_id = ""  # bind_worker: who holds the claims this broker makes
        self.alive_ms = 0

    @classmethod
    def over_client(cls, client: redis.Redis, prefix: str = "ebbtide") -> RedisBroker:
        """A broker on a client the caller owns (the operator's pooled one), for stats:
        `close()` leaves that client open."""
        broker = cls("", prefix)
        broker._sync, broker._owns_sync = client, False
        return broker

    @contextlib.contextmanager
    def _rights(self, operation: str) -> Iterator[None]:
        """An ACL refusal inside becomes PermissionDenied naming the user and what it
        tried (`operation`), with Redis's own words."""
        try:
            yield
        except redis.exceptions.ResponseError as exc:
            if not is_refusal(exc):
                raise
            user = self._user()
            detail = str(exc).split(" script: ", 1)[0]
            raise PermissionDenied(user, operation, f"Redis refused it ({detail})") from exc

    def _user(self) -> str:
        if self.url:
            return _user_of(self.url)
        kwargs = self._sync.connection_pool.connection_kwargs if self._sync is not None else {}
        return str(kwargs.get("username") or "default")

    # -- producer / admin (sync) ---------------------------------------------------------
    @property
    def client(self) -> redis.Redis:
        if self._sync is None:
            self._sync = redis.Redis.from_url(
                self.url, decode_responses=True, **TIMEOUTS, **self._tls_kwargs()
            )
            self._policy_checked = False
        return self._sync

    def _tls_kwargs(self) -> dict[str, Any]:
        return self.tls.redis_kwargs() if is_tls_url(self.url) else {}

    def _check_policy(self) -> None:
        """Refuse a Redis that may evict queued tasks (once per connection)."""
        if self._policy_checked:
            return
        try:
            info = self.client.info("memory")
        except redis.exceptions.ResponseError:
            info = {}  # INFO renamed away (some managed Redis): nothing to check
        self._policy_checked = True
        policy = evicting_policy(info)
        if policy is not None:
            self._policy_checked = False
            raise BrokerEvicts(policy, redact(self.url))

    def _script(self, name: str) -> Any:
        script = self._sync_scripts.get(name)
        if script is None:
            script = self._sync_scripts[name] = self.client.register_script(scripts.source(name))
        return script

    def enqueue(
        self, queue: str, messages: Sequence[Outgoing], max_backlog: int, unique_ttl_ms: int
    ) -> list[str]:
        """One script call per chunk of messages sharing (priority, delay, key), pipelined;
        returns per message its id, '=<pending id>' for a duplicate key, or '!full'."""
        with self._rights("enqueue tasks (the enqueue script)"):
            return self._enqueue(queue, messages, max_backlog, unique_ttl_ms)

    def _enqueue(
        self, queue: str, messages: Sequence[Outgoing], max_backlog: int, unique_ttl_ms: int
    ) -> list[str]:
        script = self._script("enqueue")
        chunked = list(wire.chunks(messages))
        pipe = self.client.pipeline(transaction=False) if len(chunked) > 1 else None
        results = []
        try:
            self._check_policy()
            for chunk in chunked:
                head = chunk[0]
                args = [self.prefix, queue, max_backlog, unique_ttl_ms, head.priority,
                        head.delay_ms, head.key, "\n".join(m.payload for m in chunk)]  # fmt: skip
                results.append(script(args=args, client=pipe))
            if pipe is not None:
                results = pipe.execute(raise_on_error=False)
        except redis.exceptions.ConnectionError as exc:
            raise RedisUnreachable(
                f"cannot reach Redis at {redact(self.url)}: {explain(exc, self.tls)}"
            ) from exc
        if pipe is not None:
            accepted, error = wire.stored_ids(chunked, results)
            if error is not None and not accepted:
                raise error
            if error is not None:
                raise PartiallyEnqueued(queue, accepted, len(messages), error) from error
        return wire.enqueue_replies(chunked, results)

    def stats(self, queues: Sequence[str] | None, worker_ttl_ms: int) -> BrokerStats:
        """Read-only: EVALSHA_RO (EVAL_RO when not cached yet), which Redis runs with writes
        refused, so the operator's identity needs no write right at all. A Redis before 7
        has neither: the plain script then (stats.lua writes nothing either way)."""
        args = [self.prefix, worker_ttl_ms, *(queues or ())]
        with self._rights("read statistics (the stats script, read-only)"):
            try:
                raw = self.client.evalsha_ro(scripts.sha("stats"), 0, *args)
            except redis.exceptions.NoScriptError:
                raw = self.client.eval_ro(scripts.source("stats"), 0, *args)
            except redis.exceptions.ResponseError as exc:
                if "unknown command" not in str(exc).lower():
                    raise
                raw = self._script("stats")(args=args)
        return wire.parse_stats(wire.decode(raw))

    def dlq_list(self, queue: str | None, limit: int) -> list[DeadTask]:
        names = [queue] if queue else sorted(self.client.smembers(f"{self.prefix}:queues"))
        out: list[DeadTask] = []
        for name in names:
            members = self.client.zrange(
                f"{self.prefix}:q:{name}:dead", 0, limit - 1, withscores=True
            )
            if not members:
                continue
            ids = [wire.member_id(m) for m, _ in members]
            payloads = self.client.hmget(f"{self.prefix}:q:{name}:msgs", ids)
            for (member, score), task_id, payload in zip(members, ids, payloads, strict=True):
                out.append(DeadTask(name, member, task_id, score / 1000, payload or ""))
        return out

    def dlq_replay(self, dead: Sequence[DeadTask]) -> int:
        done = 0
        for queue, items in wire.by_queue(dead).items():
            args: list[Any] = [self.prefix, "replay", queue]
            for item in items:
                args += [item.member, replayed_payload(item.payload)]
            done += self._script("dlq")(args=args)
        return done

    def dlq_purge(self, dead: Sequence[DeadTask]) -> int:
        done = 0
        for queue, items in wire.by_queue(dead).items():
            done += self._script("dlq")(
                args=[self.prefix, "purge", queue, *(i.member for i in items)]
            )
        return done

    def close(self) -> None:
        if self._sync is not None and self._owns_sync:
            self._sync.close()
            self._sync = None

    # -- worker (asyncio) ----------------------------------------------------------------
    async def aconnect(self) -> None:
        import redis.asyncio as aredis

        # Raw bytes: claimed payloads are sliced out of one framed reply (wire.parse_framed).
        self._async = aredis.Redis.from_url(
            self.url, decode_responses=False, **TIMEOUTS, **self._tls_kwargs()
        )
        for name in ("claim", "settle", "exchange", "heartbeat", "ratelimit"):
            self._async_scripts[name] = self._async.register_script(scripts.source(name))
        try:
            await self._async.ping()
        except redis.exceptions.ConnectionError as exc:
            raise RedisUnreachable(
                f"cannot reach Redis at {redact(self.url)}: {explain(exc, self.tls)}"
            ) from None

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()
            self._async = None

    async def ping(self) -> bool:
        return bool(await self._async.ping())

    def bind_worker(self, worker_id: str, alive_ms: int) -> None:
        """Claims record this worker, and its heartbeat keeps it alive for `alive_ms`:
        past that, any claim takes its tasks back (a dead worker's work resumes in
        seconds, not when the lease runs out)."""
        self.worker_id, self.alive_ms = worker_id, alive_ms

    async def claim(
        self, plan: Plan, n: int, lease_ms: int, run_now: int = 0, held: int = 0
    ) -> list[Delivery]:
        """`held`: tasks this worker holds now; a lost task is claimed only at 0 (alone)."""
        args: list[Any] = [self.prefix, lease_ms, n, self.worker_id, run_now, self.alive_ms, held]
        args += wire.plan_args(plan)
        with self._rights("claim tasks (the claim script)"):
            _, framed = await self._async_scripts["claim"](args=args)
        return wire.parse_framed(framed)

    async def settle(self, settlements: Sequence[Settlement], dead_ttl_ms: int) -> int:
        with self._rights("settle tasks (the settle script)"):
            return await self._async_scripts["settle"](
                args=wire.settle_args(self.prefix, settlements, dead_ttl_ms)
            )

    async def exchange(
        self,
        settlements: Sequence[Settlement],
        plan: Plan,
        n: int,
        lease_ms: int,
        dead_ttl_ms: int,
        run_now: int = 0,
        held: int = 0,
    ) -> tuple[int, list[Delivery]]:
        """Settle a batch and claim up to `n` more in the same script call; returns how
        many settlements applied (the rest were fenced out) and the claims. `held`: what
        the worker still holds once the batch is settled (a lost task is claimed only at
        0, alone: see claim_framed in lua/common.lua)."""
        head: list[Any] = [self.prefix, dead_ttl_ms, lease_ms, n, self.worker_id, run_now]
        head += [self.alive_ms, held]
        head += [len(plan), *wire.plan_args(plan)]
        args = head + wire.settle_args("", settlements, 0)[2:]
        with self._rights("settle and claim tasks (the exchange script)"):
            settled, framed = await self._async_scripts["exchange"](args=args)
        return int(settled), wire.parse_framed(framed)

    async def renew(
        self,
        worker_id: str,
        info: str,
        held: Sequence[Delivery],
        running: Collection[str],
        lease_ms: int,
        ttl_ms: int,
        sweep: bool = False,
    ) -> list[str]:
        """The heartbeat: renew every held lease, mark the running tasks started, keep
        the worker alive, and with `sweep` put back the claims recorded for this worker
        that it does not hold (a lost claim reply); returns the entries it no longer
        holds (fenced out)."""
        args: list[Any] = [self.prefix, lease_ms, worker_id, info, ttl_ms, self.alive_ms]
        args.append(1 if sweep else 0)
        with self._rights("heartbeat (the heartbeat script)"):
            lost = await self._async_scripts["heartbeat"](
                args=args + wire.heartbeat_args(held, running)
            )
        return [h.decode() if isinstance(h, bytes) else h for h in lost]

    async def heartbeat(
        self, worker_id: str, info: str, held: Sequence[Delivery], lease_ms: int, ttl_ms: int
    ) -> int:
        lost = await self.renew(worker_id, info, held, (), lease_ms, ttl_ms)
        return len(held) - len(lost)

    async def acquire_rate(self, name: str, limit: int, window_ms: int) -> tuple[int, int]:
        with self._rights("take rate-limit tokens (the ratelimit script)"):
            granted, wait_ms = await self._async_scripts["ratelimit"](
                args=[self.prefix, name, limit, window_ms, 1]
            )
        return int(granted), int(wait_ms)
