"""Redis broker: every state change is one Lua script, so it is atomic and one round trip.

The synchronous client serves producers and admin commands; the asyncio client serves
the worker. Both are created lazily, so importing this module opens no connection.
Argument and reply framing is in wire.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Iterator, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import redis

from ...errors import BrokerEvicts, PartiallyEnqueued, PermissionDenied
from ...message import replayed_payload
from ..base import BrokerStats, DeadTask, Delivery, Outgoing, Plan, Settlement, redact
from ..tls import BrokerTLS, explain
from . import calls, clients, scripts, wire
from .keys import Layout, check_prefix
from .migrate import OldKeyLayout

REPLICA_WAIT_MS = 2000  # Sentinel: how long a send waits for its replicas


class NotReplicated(ConnectionError):
    """Through Sentinel: the master stored the tasks but fewer replicas than asked
    acknowledged them in time (the master may be a demoted one, cut off from its
    replicas), so a failover could lose them: the caller sends again (a duplicate then
    runs twice, never zero times)."""

    def __init__(self, queue: str, where: str, wanted: int, acked: Any) -> None:
        got = acked if isinstance(acked, int) else f"none ({acked})"
        super().__init__(
            f"send to queue {queue!r} at {where}: stored on the master but acknowledged by "
            f"{got} of {wanted} replica(s) within {REPLICA_WAIT_MS} ms, so a failover may "
            "lose it: send again (or lower ?min_replicas= in the redis+sentinel:// URL)"
        )


class RedisUnreachable(ConnectionError, redis.exceptions.ConnectionError):
    """`send()` cannot reach Redis: the built-in ConnectionError, as on RabbitMQ, and
    still the redis-py one that callers may already catch."""

    def __init__(self, message: str) -> None:
        # redis-py's own __init__ too: its __repr__ (asyncio logs it) reads error_type.
        redis.exceptions.ConnectionError.__init__(self, message)


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
    netloc = urlsplit(url).netloc
    user = netloc.rpartition("@")[0].partition(":")[0] if "@" in netloc else ""
    return unquote(user) or "default"


def _sha_command(name: str, call: calls.Call, read_only: bool = False) -> list[Any]:
    verb = "EVALSHA_RO" if read_only else "EVALSHA"
    return [verb, scripts.sha(name), len(call.keys), *call.keys, *call.args]


def _source_command(name: str, call: calls.Call, read_only: bool = False) -> list[Any]:
    verb = "EVAL_RO" if read_only else "EVAL"
    return [verb, scripts.source(name), len(call.keys), *call.keys, *call.args]


class RedisBroker:
    """The Broker protocol, plus the Exchanging capability (settle and claim at once).

    One code path for a single Redis, a Sentinel master and a Redis Cluster: every call
    goes to one slot group (keys.Layout.group), which on a single Redis is everything."""

    def __init__(self, url: str, prefix: str = "ebbtide", tls: BrokerTLS | None = None) -> None:
        self.url = url
        self.prefix = check_prefix(prefix)
        self.target = clients.parse_url(url) if url else clients.Target("single", "")
        self.layout = Layout(prefix, self.target.clustered)
        self.tls = BrokerTLS.from_env() if tls is None else tls  # rediss:// verification
        self._sync: Any = None
        self._owns_sync = True  # False: the caller's client, left open by close()
        self._async: Any = None
        self._policy_checked = False  # INFO memory read once per connection
        self.worker_id = ""  # bind_worker: who holds the claims this broker makes
        self.alive_ms = 0
        self._seen: dict[str, None] = {}  # queues this worker claims from (heartbeat)

    @classmethod
    def over_client(cls, client: Any, prefix: str = "ebbtide") -> RedisBroker:
        """A broker on a client the caller owns (the operator's pooled one), for stats:
        `close()` leaves that client open."""
        from redis.cluster import RedisCluster

        broker = cls("", prefix)
        broker.layout = Layout(broker.prefix, isinstance(client, RedisCluster))
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
        from redis.cluster import RedisCluster

        if self._sync is None:
            return "default"
        if isinstance(self._sync, RedisCluster):
            kwargs = self._sync.nodes_manager.connection_kwargs
        else:
            kwargs = self._sync.connection_pool.connection_kwargs
        return str(kwargs.get("username") or "default")

    # -- producer / admin (sync) ---------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._sync is None:
            self._sync = clients.sync_client(
                self.target, self.tls, decode_responses=True, **TIMEOUTS
            )
            self._policy_checked = False
        return self._sync

    def _check_policy(self) -> None:
        """Refuse a Redis that may evict queued tasks (checked on every primary), or that
        still holds tasks in the key layout before hash tags (once per connection)."""
        if self._policy_checked:
            return
        for node in clients.nodes_of(self.client):
            try:
                info = node.info("memory")
            except redis.exceptions.ResponseError:
                info = {}  # INFO renamed away (some managed Redis): nothing to check
            policy = evicting_policy(info)
            if policy is not None:
                raise BrokerEvicts(policy, redact(self.url))
        if self.client.exists(self.layout.old_queues):
            raise OldKeyLayout(self.prefix, redact(self.url))
        self._policy_checked = True

    def _eval(self, name: str, call: calls.Call) -> Any:
        try:
            return self.client.execute_command(*_sha_command(name, call))
        except redis.exceptions.NoScriptError:
            return self.client.execute_command(*_source_command(name, call))

    def _pipelined(
        self,
        named: Sequence[tuple[str, calls.Call]],
        *plain: Sequence[Any],
        after: Sequence[Sequence[Any]] = (),
    ) -> list[Any]:
        """Script calls (`plain` commands before, `after` ones behind, their replies
        last) in one pipeline: one round trip on a single Redis, one per node on a
        cluster. Errors are returned, not raised; a script the server has not cached is
        sent again whole."""
        pipe = self.client.pipeline(transaction=False)
        for command in plain:
            pipe.execute_command(*command)
        for name, call in named:
            pipe.execute_command(*_sha_command(name, call))
        for command in after:
            pipe.execute_command(*command)
        replies = pipe.execute(raise_on_error=False)
        results = replies[len(plain) : len(plain) + len(named)]
        tail = replies[len(plain) + len(named) :]
        for i, result in enumerate(results):
            if isinstance(result, redis.exceptions.NoScriptError):
                try:
                    results[i] = self.client.execute_command(*_source_command(*named[i]))
                except redis.exceptions.ResponseError as exc:
                    results[i] = exc
        return results + tail

    def enqueue(
        self, queue: str, messages: Sequence[Outgoing], max_backlog: int, unique_ttl_ms: int
    ) -> list[str]:
        """One script call per chunk of messages sharing (priority, delay, key), pipelined
        with the registry's SADD; returns per message its id, '=<pending id>' for a
        duplicate key, or '!full'."""
        with self._rights("enqueue tasks (the enqueue script)"):
            return self._enqueue(queue, messages, max_backlog, unique_ttl_ms)

    def _enqueue(
        self, queue: str, messages: Sequence[Outgoing], max_backlog: int, unique_ttl_ms: int
    ) -> list[str]:
        chunked = list(wire.chunks(messages))
        named = [
            ("enqueue", calls.enqueue(self.layout, queue, chunk, max_backlog, unique_ttl_ms))
            for chunk in chunked
        ]
        # Through Sentinel, "accepted" means a replica has it too: WAIT in the same round
        # trip, so a failover right after the send cannot drop the tasks.
        replicas = self.target.min_replicas if self.target.kind == "sentinel" else 0
        wait = [("WAIT", replicas, REPLICA_WAIT_MS)] if replicas else []
        try:
            self._check_policy()
            results = self._pipelined(named, ("SADD", self.layout.registry[0], queue), after=wait)
        except redis.exceptions.ConnectionError as exc:
            raise RedisUnreachable(
                f"cannot reach Redis at {redact(self.url)}: {explain(exc, self.tls)}"
            ) from exc
        except redis.exceptions.RedisClusterException as exc:  # no node of it answers
            raise RedisUnreachable(
                f"cannot reach the Redis Cluster at {redact(self.url)}: {exc}"
            ) from exc
        if wait:
            acked = results.pop()
            if not isinstance(acked, int) or acked < replicas:
                raise NotReplicated(queue, redact(self.url), replicas, acked)
        accepted, error = wire.stored_ids(chunked, results)
        if error is not None and not accepted:
            raise error
        if error is not None:
            raise PartiallyEnqueued(queue, accepted, len(messages), error) from error
        return wire.enqueue_replies(chunked, results)

    def known_queues(self) -> list[str]:
        return sorted(wire.decode(q) for q in self.client.smembers(self.layout.registry[0]))

    def stats(self, queues: Sequence[str] | None, worker_ttl_ms: int) -> BrokerStats:
        """Read-only: EVALSHA_RO (EVAL_RO when not cached yet), which Redis runs with writes
        refused, so the operator's identity needs no write right at all. A Redis before 7
        has neither: the plain script then (stats.lua writes nothing either way). One call
        per slot group, pipelined; the workers come with the first (the registry's own
        call on a cluster)."""
        names = list(queues) if queues else self.known_queues()
        groups = list(self.layout.by_group(names).values())
        if self.layout.clustered:
            named = [calls.stats(self.layout, g, worker_ttl_ms, False) for g in groups]
            named.insert(0, calls.stats(self.layout, [], worker_ttl_ms, True))
        else:
            named = [calls.stats(self.layout, names, worker_ttl_ms, True)]
        with self._rights("read statistics (the stats script, read-only)"):
            raws = self._read_only(named)
        return wire.merge_stats([wire.parse_stats(wire.decode(raw)) for raw in raws])

    def _read_only(self, named: Sequence[calls.Call]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for call in named:
            pipe.execute_command(*_sha_command("stats", call, read_only=True))
        results = pipe.execute(raise_on_error=False)
        for i, result in enumerate(results):
            if isinstance(result, redis.exceptions.NoScriptError):
                results[i] = self.client.execute_command(
                    *_source_command("stats", named[i], read_only=True)
                )
            elif isinstance(result, redis.exceptions.ResponseError):
                if "unknown command" not in str(result).lower():
                    raise result
                results[i] = self._eval("stats", named[i])  # Redis < 7: no EVAL_RO
        return results

    def dlq_list(self, queue: str | None, limit: int) -> list[DeadTask]:
        names = [queue] if queue else self.known_queues()
        out: list[DeadTask] = []
        for name in names:
            members = self.client.zrange(
                self.layout.key(name, "dead"), 0, limit - 1, withscores=True
            )
            if not members:
                continue
            ids = [wire.member_id(m) for m, _ in members]
            payloads = self.client.hmget(self.layout.key(name, "msgs"), ids)
            for (member, score), task_id, payload in zip(members, ids, payloads, strict=True):
                out.append(DeadTask(name, member, task_id, score / 1000, payload or ""))
        return out

    def dlq_replay(self, dead: Sequence[DeadTask]) -> int:
        done = 0
        for queue, items in wire.by_queue(dead).items():
            rest: list[Any] = []
            for item in items:
                rest += [item.member, replayed_payload(item.payload)]
            done += self._eval("dlq", calls.dlq(self.layout, "replay", queue, rest))
        return done

    def dlq_purge(self, dead: Sequence[DeadTask]) -> int:
        done = 0
        for queue, items in wire.by_queue(dead).items():
            rest = [i.member for i in items]
            done += self._eval("dlq", calls.dlq(self.layout, "purge", queue, rest))
        return done

    def close(self) -> None:
        if self._sync is not None and self._owns_sync:
            self._sync.close()
            self._sync = None

    # -- worker (asyncio) ----------------------------------------------------------------
    async def aconnect(self) -> None:
        # Raw bytes: claimed payloads are sliced out of one framed reply (wire.parse_framed).
        self._async = clients.async_client(
            self.target, self.tls, decode_responses=False, **TIMEOUTS
        )
        try:
            await self._async.ping()
            old = await self._old_layout()
        except redis.exceptions.ConnectionError as exc:
            raise RedisUnreachable(
                f"cannot reach Redis at {redact(self.url)}: {explain(exc, self.tls)}"
            ) from None
        except redis.exceptions.RedisClusterException as exc:
            raise RedisUnreachable(
                f"cannot reach the Redis Cluster at {redact(self.url)}: {exc}"
            ) from None
        if old:
            raise OldKeyLayout(self.prefix, redact(self.url))

    async def _old_layout(self) -> bool:
        """Whether the old key layout is there; an identity not allowed EXISTS cannot
        claim either, and is told so by its first claim."""
        try:
            return bool(await self._async.exists(self.layout.old_queues))
        except redis.exceptions.NoPermissionError:
            return False

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()
            self._async = None

    async def ping(self) -> bool:
        return bool(await self._async.ping())

    async def _aeval(self, name: str, call: calls.Call) -> Any:
        try:
            return await self._async.execute_command(*_sha_command(name, call))
        except redis.exceptions.NoScriptError:
            return await self._async.execute_command(*_source_command(name, call))

    def bind_worker(self, worker_id: str, alive_ms: int) -> None:
        """Claims record this worker, and its heartbeat keeps it alive for `alive_ms`:
        past that, any claim takes its tasks back (a dead worker's work resumes in
        seconds, not when the lease runs out)."""
        self.worker_id, self.alive_ms = worker_id, alive_ms

    async def claim(
        self, plan: Plan, n: int, lease_ms: int, run_now: int = 0, held: int = 0
    ) -> list[Delivery]:
        """`held`: tasks this worker holds now; a lost task is claimed only at 0 (alone)."""
        with self._rights("claim tasks (the claim script)"):
            _, claimed = await self._work("claim", (), plan, n, lease_ms, 0, run_now, held)
        return claimed

    async def settle(self, settlements: Sequence[Settlement], dead_ttl_ms: int) -> int:
        with self._rights("settle tasks (the settle script)"):
            settled, _ = await self._work("settle", settlements, (), 0, 0, dead_ttl_ms, 0, 0)
        return settled

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
        with self._rights("settle and claim tasks (the exchange script)"):
            return await self._work(
                "exchange", settlements, plan, n, lease_ms, dead_ttl_ms, run_now, held
            )

    async def _work(
        self,
        name: str,
        settlements: Sequence[Settlement],
        plan: Plan,
        n: int,
        lease_ms: int,
        dead_ttl_ms: int,
        run_now: int,
        held: int,
    ) -> tuple[int, list[Delivery]]:
        """One call per slot group. On a single Redis that is one call. On a cluster a
        busy worker claims from every group at once (_work_at_once); one holding nothing
        (it may take a lost task, which must run alone) settles every group at once with
        the first group's claim, then claims from the other groups in plan order with
        what is left of `n` (each call takes its own quotas first and leaves room for the
        quotas of the groups after it; a second round fills what those left)."""
        self._seen.update((q, None) for q, _ in plan)
        groups = calls.split_work(self.layout, plan, settlements)
        if not groups:
            return 0, []
        ctx = {"dead_ttl_ms": dead_ttl_ms, "lease_ms": lease_ms, "worker": self.worker_id}
        ctx["alive_ms"] = self.alive_ms
        claiming = [g for g in groups if g.plan]
        totals = [sum(quota for _, quota in g.plan) for g in claiming]
        if held > 0 and len(claiming) > 1:
            return await self._work_at_once(name, groups, claiming, totals, n, run_now, held, ctx)
        first = claiming[0] if claiming else None
        jobs = []
        for g in groups:
            if g is first:
                want = wire.group_want(n, totals, 0)
                call = calls.work(self.layout, g, n=want, run_now=run_now, held=held, **ctx)
                jobs.append(self._aeval(name, call))
            elif g.settlements:
                only = calls.WorkGroup([], g.settlements)
                jobs.append(self._aeval(name, calls.work(self.layout, only, **ctx)))
        replies = await asyncio.gather(*jobs) if len(jobs) > 1 else [await jobs[0]]
        settled = sum(int(r[0]) for r in replies)
        if first is None:
            return settled, []
        claimed = wire.parse_framed(replies[0][1])
        halted = int(replies[0][2]) == 1
        # A cluster only: the other groups in plan order, then the groups that gave all
        # they were asked for while room was kept for the groups after them.
        capped = [first] if len(claimed) == want < n else []
        rounds = [(g, i) for i, g in enumerate(claiming) if i > 0] + [(g, -1) for g in capped]
        for g, i in rounds:
            if halted or len(claimed) >= n:
                break
            left = n - len(claimed)
            want = wire.group_want(left, totals, i) if i >= 0 else left
            call = calls.work(
                self.layout,
                calls.WorkGroup(g.plan),
                n=want,
                run_now=max(0, run_now - len(claimed)),
                held=held + len(claimed),
                **ctx,
            )
            _, framed, halt = await self._aeval(name, call)
            more = wire.parse_framed(framed)
            if i >= 0 and len(more) == want < left:
                rounds.append((g, -1))
            claimed += more
            halted = int(halt) == 1
        return settled, claimed

    async def _work_at_once(
        self,
        name: str,
        groups: list[calls.WorkGroup],
        claiming: list[calls.WorkGroup],
        totals: list[int],
        n: int,
        run_now: int,
        held: int,
        ctx: dict[str, Any],
    ) -> tuple[int, list[Delivery]]:
        """A busy worker's claim over several slots (a cluster only): every slot at once,
        each asked for its quotas (the plan's quotas add up to `n`), then the slots that
        gave all they were asked for (or were asked for none) fill what is left, in plan
        order. A worker holding tasks never takes a lost task (it must run alone), so the
        concurrent calls cannot take one beside another."""
        wants: dict[int, int] = {}
        left, marked = n, run_now
        for g, total in zip(claiming, totals, strict=True):
            wants[id(g)] = want = min(total, left)
            left -= want
        jobs, asked = [], []
        for g in groups:
            if id(g) in wants:
                want = wants[id(g)]
                now_ = min(marked, want)
                marked -= now_
                call = calls.work(self.layout, g, n=want, run_now=now_, held=held, **ctx)
                asked.append((g, want))
            else:
                call = calls.work(self.layout, calls.WorkGroup([], g.settlements), **ctx)
                asked.append((g, -1))
            jobs.append(self._aeval(name, call))
        replies = await asyncio.gather(*jobs)
        settled = sum(int(r[0]) for r in replies)
        claimed: list[Delivery] = []
        halted, more_there = False, []
        for (g, want), reply in zip(asked, replies, strict=True):
            if want < 0:
                continue
            got = wire.parse_framed(reply[1])
            claimed += got
            halted = halted or int(reply[2]) == 1
            if len(got) == want:
                more_there.append(g)
        for g in more_there:
            if halted or len(claimed) >= n:
                break
            want = n - len(claimed)
            call = calls.work(
                self.layout, calls.WorkGroup(g.plan), n=want, held=held + len(claimed), **ctx
            )
            _, framed, halt = await self._aeval(name, call)
            claimed += wire.parse_framed(framed)
            halted = int(halt) == 1
        return settled, claimed

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
        the worker alive in every queue it claims from, publish its info, and with
        `sweep` put back the claims recorded for this worker that it does not hold (a
        lost claim reply); returns the entries it no longer holds (fenced out). One call
        per slot group (on a cluster the registry is one more), concurrently."""
        ctx = {"lease_ms": lease_ms, "worker": worker_id, "info": info, "ttl_ms": ttl_ms}
        ctx |= {"alive_ms": self.alive_ms, "sweep": sweep}
        queues = [*self._seen, *(d.queue for d in held)]
        groups = self.layout.by_group(queues)
        cluster = self.layout.clustered
        named = []
        for group, names in groups.items():
            mine = [d for d in held if self.layout.group(d.queue) == group]
            named.append(
                calls.heartbeat(self.layout, names, mine, running, register=not cluster, **ctx)
            )
        if cluster or not named:
            named.append(calls.heartbeat(self.layout, [], [], (), register=True, **ctx))
        with self._rights("heartbeat (the heartbeat script)"):
            jobs = [self._aeval("heartbeat", call) for call in named]
            replies = await asyncio.gather(*jobs) if len(jobs) > 1 else [await jobs[0]]
        return [h.decode() if isinstance(h, bytes) else h for lost in replies for h in lost]

    async def heartbeat(
        self, worker_id: str, info: str, held: Sequence[Delivery], lease_ms: int, ttl_ms: int
    ) -> int:
        lost = await self.renew(worker_id, info, held, (), lease_ms, ttl_ms)
        return len(held) - len(lost)

    async def acquire_rate(self, name: str, limit: int, window_ms: int) -> tuple[int, int]:
        call = calls.Call(list(self.layout.rate(name)), [limit, window_ms, 1])
        with self._rights("take rate-limit tokens (the ratelimit script)"):
            granted, wait_ms = await self._aeval("ratelimit", call)
        return int(granted), int(wait_ms)
