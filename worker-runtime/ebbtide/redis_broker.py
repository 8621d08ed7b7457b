"""Redis broker: every state change is one Lua script, so it is atomic and one round trip.

The synchronous client serves producers and admin commands; the asyncio client serves
the worker. Both are created lazily, so importing this module opens no connection.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import redis

from . import scripts
from .broker import DeadTask, Delivery, Outgoing, Settlement, redact
from .message import MAX_PRIORITY
from .stats import BrokerStats, QueueStats, WorkerInfo

ENQUEUE_CHUNK = 1000  # messages per EVALSHA in send_many: bounds a script's run time


class RedisUnreachable(ConnectionError, redis.exceptions.ConnectionError):
    """`send()` cannot reach Redis: the built-in ConnectionError, as on RabbitMQ, and
    still the redis-py one that callers may already catch."""


class RedisBroker:
    def __init__(self, url: str, prefix: str = "ebbtide") -> None:
        self.url = url
        self.prefix = prefix
        self._sync: redis.Redis | None = None
        self._sync_scripts: dict[str, Any] = {}
        self._async: Any = None
        self._async_scripts: dict[str, Any] = {}

    # -- producer / admin (sync) ---------------------------------------------------------
    @property
    def client(self) -> redis.Redis:
        if self._sync is None:
            self._sync = redis.Redis.from_url(self.url, decode_responses=True)
        return self._sync

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
        script = self._script("enqueue")
        chunks = list(_chunks(messages))
        pipe = self.client.pipeline(transaction=False) if len(chunks) > 1 else None
        results = []
        try:
            for chunk in chunks:
                head = chunk[0]
                args = [self.prefix, queue, max_backlog, unique_ttl_ms, head.priority,
                        head.delay_ms, head.key, "\n".join(m.payload for m in chunk)]  # fmt: skip
                results.append(script(args=args, client=pipe))
            if pipe is not None:
                results = pipe.execute()
        except redis.exceptions.ConnectionError as exc:
            raise RedisUnreachable(f"cannot reach Redis at {redact(self.url)}: {exc}") from exc
        replies: list[str] = []
        for chunk, (status, dups) in zip(chunks, results, strict=True):
            pending = iter(dups)
            for m, mark in zip(chunk, status, strict=True):
                if mark == ".":
                    replies.append(m.task_id)
                elif mark == "=":
                    replies.append("=" + next(pending))
                else:
                    replies.append("!full")
        return replies

    def stats(self, queues: Sequence[str] | None, worker_ttl_ms: int) -> BrokerStats:
        raw = self._script("stats")(args=[self.prefix, worker_ttl_ms, *(queues or ())])
        return parse_stats(raw)

    def dlq_list(self, queue: str | None, limit: int) -> list[DeadTask]:
        names = [queue] if queue else sorted(self.client.smembers(f"{self.prefix}:queues"))
        out: list[DeadTask] = []
        for name in names:
            members = self.client.zrange(
                f"{self.prefix}:q:{name}:dead", 0, limit - 1, withscores=True
            )
            if not members:
                continue
            ids = [m.partition("|")[2] for m, _ in members]
            payloads = self.client.hmget(f"{self.prefix}:q:{name}:msgs", ids)
            for (member, score), task_id, payload in zip(members, ids, payloads, strict=True):
                out.append(DeadTask(name, member, task_id, score / 1000, payload or ""))
        return out

    def dlq_replay(self, dead: Sequence[DeadTask]) -> int:
        done = 0
        for queue, items in _by_queue(dead).items():
            args: list[Any] = [self.prefix, "replay", queue]
            for item in items:
                args += [item.member, _fresh_payload(item.payload)]
            done += self._script("dlq")(args=args)
        return done

    def dlq_purge(self, dead: Sequence[DeadTask]) -> int:
        done = 0
        for queue, items in _by_queue(dead).items():
            done += self._script("dlq")(
                args=[self.prefix, "purge", queue, *(i.member for i in items)]
            )
        return done

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    # -- worker (asyncio) ----------------------------------------------------------------
    async def aconnect(self) -> None:
        import redis.asyncio as aredis

        # Raw bytes: claimed payloads are sliced out of one framed reply (parse_framed).
        self._async = aredis.Redis.from_url(self.url, decode_responses=False)
        for name in ("claim", "settle", "exchange", "heartbeat", "ratelimit"):
            self._async_scripts[name] = self._async.register_script(scripts.source(name))
        await self._async.ping()

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()
            self._async = None

    async def ping(self) -> bool:
        return bool(await self._async.ping())

    async def claim(self, plan: Sequence[tuple[str, int]], n: int, lease_ms: int) -> list[Delivery]:
        args: list[Any] = [self.prefix, lease_ms, n]
        for queue, quota in plan:
            args += [queue, quota]
        _, framed = await self._async_scripts["claim"](args=args)
        return parse_framed(framed)

    async def settle(self, settlements: Sequence[Settlement], dead_ttl_ms: int) -> int:
        return await self._async_scripts["settle"](
            args=settle_args(self.prefix, settlements, dead_ttl_ms)
        )

    async def exchange(
        self,
        settlements: Sequence[Settlement],
        plan: Sequence[tuple[str, int]],
        n: int,
        lease_ms: int,
        dead_ttl_ms: int,
    ) -> list[Delivery]:
        """Settle a batch and claim up to `n` more in the same script call."""
        head: list[Any] = [self.prefix, dead_ttl_ms, lease_ms, n, len(plan)]
        for queue, quota in plan:
            head += [queue, quota]
        args = head + settle_args("", settlements, 0)[2:]
        _, framed = await self._async_scripts["exchange"](args=args)
        return parse_framed(framed)

    async def heartbeat(
        self, worker_id: str, info: str, held: Sequence[Delivery], lease_ms: int, ttl_ms: int
    ) -> int:
        args: list[Any] = [self.prefix, lease_ms, worker_id, info, ttl_ms]
        for d in held:
            args += [d.queue, d.entry]
        return await self._async_scripts["heartbeat"](args=args)

    async def acquire_rate(self, name: str, limit: int, window_ms: int) -> tuple[int, int]:
        granted, wait_ms = await self._async_scripts["ratelimit"](
            args=[self.prefix, name, limit, window_ms, 1]
        )
        return int(granted), int(wait_ms)


def settle_args(prefix: str, settlements: Sequence[Settlement], dead_ttl_ms: int) -> list[Any]:
    """Plain acks are grouped per queue (one argument each); other ops carry all fields."""
    acks: dict[str, tuple[list[str], list[int]]] = {}
    other: list[Any] = []
    for s in settlements:
        d = s.delivery
        if s.op == "ack" and not s.unique_key:
            entries, busy = acks.setdefault(d.queue, ([], [0]))
            entries.append(d.entry)
            busy[0] += s.busy_us
        else:
            other += ["X", s.op, d.queue, d.entry, s.payload, s.delay_ms, s.busy_us, s.unique_key]
    args: list[Any] = [prefix, dead_ttl_ms]
    # Unchanged order inside each kind: requeues (LPUSH) rely on it.
    for queue, (entries, busy) in acks.items():
        args += ["A", queue, busy[0], len(entries), *entries]
    return args + other


def parse_framed(blob: bytes) -> list[Delivery]:
    """Split "<queue>\\n<entry>\\n<payload length>\\n<payload>"* (lengths in bytes)."""
    out: list[Delivery] = []
    pos, end, find = 0, len(blob), blob.find
    names: dict[bytes, str] = {}
    while pos < end:
        a = find(b"\n", pos)
        b = find(b"\n", a + 1)
        c = find(b"\n", b + 1)
        stop = c + 1 + int(blob[b + 1 : c])
        raw_queue = blob[pos:a]
        queue = names.get(raw_queue)
        if queue is None:
            queue = names[raw_queue] = raw_queue.decode()
        out.append(Delivery(queue, blob[a + 1 : b].decode(), blob[c + 1 : stop]))
        pos = stop
    return out


def _chunks(messages: Sequence[Outgoing]) -> Iterator[Sequence[Outgoing]]:
    """Runs of at most ENQUEUE_CHUNK messages with the same priority, delay and key."""
    start = 0
    while start < len(messages):
        first = messages[start]
        end = start + 1
        limit = min(len(messages), start + ENQUEUE_CHUNK)
        while end < limit and (
            (m := messages[end]).priority == first.priority
            and m.delay_ms == first.delay_ms
            and m.key == first.key
        ):
            end += 1
        yield messages[start:end]
        start = end


def _by_queue(dead: Sequence[DeadTask]) -> dict[str, list[DeadTask]]:
    grouped: dict[str, list[DeadTask]] = {}
    for item in dead:
        grouped.setdefault(item.queue, []).append(item)
    return grouped


def _fresh_payload(payload: str) -> str:
    """A replayed task starts its retries afresh; its last error stays for the record."""
    try:
        body = json.loads(payload)
    except ValueError:
        return payload  # still undecodable: the worker will bury it again, with the reason
    if isinstance(body, dict):
        body["attempt"] = 0
        body["replayed"] = int(body.get("replayed", 0)) + 1
        return json.dumps(body, separators=(",", ":"))
    return payload


def parse_stats(raw: list[Any]) -> BrokerStats:
    (sec, usec), rows, workers = raw
    now = int(sec) + int(usec) / 1e6
    queues: dict[str, QueueStats] = {}
    for name, ready, oldest, inflight, delayed, dead, enq, done, busy_us in rows:
        by_prio = {p: int(n) for p, n in zip(range(MAX_PRIORITY + 1), ready, strict=True) if n}
        queues[name] = QueueStats(
            queue=name,
            ready=sum(int(n) for n in ready),
            ready_by_priority=by_prio,
            in_flight=int(inflight),
            delayed=int(delayed),
            dead=int(dead),
            oldest_ready_at=int(oldest) / 1000 if int(oldest) >= 0 else None,
            enqueued_total=int(enq),
            completed_total=int(done),
            busy_seconds_total=int(busy_us) / 1e6,
        )
    infos = []
    for text in workers:
        try:
            w = json.loads(text)
            infos.append(
                WorkerInfo(
                    worker_id=str(w["worker_id"]),
                    pod=w.get("pod"),
                    busy=bool(w.get("running", 0)),
                    running=int(w.get("running", 0)),
                    concurrency=int(w.get("concurrency", 0)),
                    queues=tuple(w.get("queues", ())),
                    last_seen=float(w.get("at", now)),
                )
            )
        except (ValueError, KeyError, TypeError):
            continue  # a foreign or corrupt heartbeat never breaks the operator's poll
    return BrokerStats(now=now, queues=queues, workers=tuple(infos))
