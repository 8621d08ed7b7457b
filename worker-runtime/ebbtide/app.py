"""The producer API: `App`, `@app.task`, and the task handle's `send` family."""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from . import tracing
from .batch import Batch
from .brokers import check_scheme, open_broker, resolve_url
from .brokers.base import Broker, Outgoing
from .codec import DEFAULT_COMPRESS_THRESHOLD, Codec, keys_from_dir
from .errors import BacklogFull, PartiallyEnqueued
from .lifecycle import parse_rate
from .message import check_priority, check_queue, encode_payload, new_task_id
from .shards import RoundRobin, check_shards, counts_from_env, shard_name, shard_of
from .validation import ArgumentCheck

DEFAULT_QUEUE = "default"


@dataclass(frozen=True)
class QueueConfig:
    name: str
    max_backlog: int = 0  # 0 = unbounded (a sharded queue: split evenly over its shards)
    shards: int = 1  # broker queues this queue is split into (shards.py)


class App:
    """Holds the task registry and the broker connection (opened lazily on first use)."""

    def __init__(
        self,
        broker_url: str | None = None,
        *,
        max_payload_bytes: int = 1 << 20,
        unique_ttl: float = 3600.0,
        dead_ttl: float = 7 * 86400.0,
        retry_backoff: float = 1.0,
        key_prefix: str | None = None,
        unknown_task_grace_seconds: float = 600.0,
        serializer: str = "json",
        compress_threshold: int | None = DEFAULT_COMPRESS_THRESHOLD,
        encryption_keys: Mapping[str, bytes | str] | None = None,
        encrypt_with: str | None = None,
        encryption_required: bool = False,
        shards: Mapping[str, int] | None = None,
    ) -> None:
        """`serializer` ("json" or "msgpack") and `compress_threshold` (zstd above this
        many bytes of arguments, None = never) shape what this app sends; any worker reads
        any format. `encryption_keys` ({key id: 32-byte key, raw or base64}; default: the
        files of $EBBTIDE_ENCRYPTION_KEYS_DIR, a mounted Secret) are all read with, and
        `encrypt_with` (default: $EBBTIDE_ENCRYPT_WITH, or the only key) seals what is sent;
        `encryption_required` makes a worker bury every task that is not encrypted
        (docs/runtime.md, "Payload formats" and "Encryption"). `shards` ({queue: K})
        splits queues into K broker queues each; $EBBTIDE_SHARDS (what the operator sets
        from spec.queues[].shards) overrides it (docs/runtime.md, "Sharded queues")."""
        if broker_url:
            check_scheme(broker_url)
        self._broker_url = broker_url
        self.max_payload_bytes = max_payload_bytes
        self.unique_ttl = unique_ttl
        self.dead_ttl = dead_ttl
        self.retry_backoff = retry_backoff  # first retry waits ~this many seconds, doubling
        # The operator sets EBBTIDE_KEY_PREFIX on workers from spec.broker.keyPrefix.
        self.key_prefix = key_prefix or os.environ.get("EBBTIDE_KEY_PREFIX") or "ebbtide"
        # A task name this worker does not know is retried this long before it dies:
        # in a rolling deploy the producers may be ahead of the workers.
        self.unknown_task_grace_seconds = unknown_task_grace_seconds
        if encryption_keys is None and os.environ.get("EBBTIDE_ENCRYPTION_KEYS_DIR"):
            encryption_keys = keys_from_dir(os.environ["EBBTIDE_ENCRYPTION_KEYS_DIR"])
        encrypt_with = encrypt_with or os.environ.get("EBBTIDE_ENCRYPT_WITH") or None
        self.codec = Codec.build(
            serializer, compress_threshold, encryption_keys, encrypt_with, encryption_required
        )
        self.tasks: dict[str, Task] = {}
        self.queues: dict[str, QueueConfig] = {}
        for queue, count in (shards or {}).items():
            self.queue(queue, shards=count)
        # The deployment's word (env, or the worker's --shards / --drain-shards) beats
        # the code's: the operator sets it from the TaskQueue spec.
        self.shard_override, self.drain_shards = counts_from_env()
        self._round_robin = RoundRobin()
        self._broker: Broker | None = None
        # The open `with app.batch():` block of this thread / asyncio task, if any.
        self._batch: contextvars.ContextVar[Batch | None] = contextvars.ContextVar(
            f"ebbtide-batch-{id(self)}", default=None
        )

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            self._broker = open_broker(self._broker_url, self.key_prefix)
        return self._broker

    @property
    def broker_url(self) -> str:
        """The URL the broker is (or will be) opened at: the App's, else the environment's."""
        return resolve_url(self._broker_url)

    def use_broker_url(self, url: str) -> None:
        """Point the app at another broker (the CLI's --broker-url)."""
        check_scheme(url)
        self._broker_url, self._broker = url, None

    def queue(self, name: str, *, max_backlog: int = 0, shards: int = 1) -> QueueConfig:
        """Declare queue options; `send()` past `max_backlog` raises BacklogFull; `shards`
        splits it into that many broker queues (1..256, docs/runtime.md "Sharded
        queues")."""
        if max_backlog < 0:
            raise ValueError(f"max_backlog must be >= 0, got {max_backlog}")
        check_shards(shards, f"the shards of queue {name!r}")
        config = self.queues[name] = QueueConfig(check_queue(name), max_backlog, shards)
        return config

    def shard_count(self, queue: str) -> int:
        """How many shards this app sends `queue`'s tasks over."""
        if queue in self.shard_override:
            return self.shard_override[queue]
        config = self.queues.get(queue)
        return config.shards if config else 1

    def drained_shards(self, queue: str) -> int:
        """How many shards a worker of this app drains: all it may send to, and those a
        shrink left behind until they are empty (EBBTIDE_DRAIN_SHARDS)."""
        config = self.queues.get(queue)
        declared = config.shards if config else 1
        return max(self.shard_count(queue), declared, self.drain_shards.get(queue, 1))

    def use_shards(self, shards: Mapping[str, int], drain: Mapping[str, int]) -> None:
        """The worker's --shards and --drain-shards (over the environment's)."""
        self.shard_override = {**self.shard_override, **shards}
        self.drain_shards = {**self.drain_shards, **drain}

    def pick_shard(self, queue: str, key: str | None) -> str:
        """The broker queue one task goes to: by `key`'s stable hash, else round-robin."""
        count = self.shard_count(queue)
        if count == 1:
            return queue
        index = shard_of(key, count) if key is not None else self._round_robin.next(queue, count)
        return shard_name(queue, index)

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        queue: str = DEFAULT_QUEUE,
        max_retries: int = 3,
        timeout: float | None = None,
        priority: int = 0,
        rate: str | None = None,
        max_recoveries: int = 3,
        validate: bool = True,
        schema: Mapping[str, Any] | None = None,
        shards: int | None = None,
    ) -> Any:
        """Register a def or async def as a task: `@app.task` or `@app.task(queue=...)`;
        `shards=K` declares its queue split into K shards (as `app.queue(q, shards=K)`).
        Its arguments are checked against its signature and type hints at `send()` and
        in the worker (`validate=False` opts out), and against `schema`, a JSON Schema
        of the arguments by name, when given (docs/runtime.md, "Payload validation")."""

        if shards is not None:
            self._declare_shards(check_queue(queue), shards)

        def register(f: Callable[..., Any]) -> Task:
            task = Task(
                self,
                f,
                name or f"{f.__module__}.{f.__qualname__}",
                check_queue(queue),
                max_retries,
                timeout,
                check_priority(priority),
                rate,
                max_recoveries,
                validate=validate,
                schema=schema,
            )
            if task.name in self.tasks and self.tasks[task.name].fn is not f:
                raise ValueError(f"two tasks are named {task.name!r}: pass name= to one")
            self.tasks[task.name] = task
            return task

        return register(fn) if fn is not None else register

    def _declare_shards(self, queue: str, shards: int) -> None:
        check_shards(shards, f"the shards of queue {queue!r}")
        config = self.queues.get(queue)
        if config is None or config.shards == 1:
            self.queues[queue] = QueueConfig(queue, config.max_backlog if config else 0, shards)
        elif config.shards != shards:
            raise ValueError(
                f"queue {queue!r} is declared with {config.shards} shards, and now with "
                f"{shards}: declare it once (app.queue({queue!r}, shards=...))"
            )

    @contextlib.contextmanager
    def batch(self) -> Iterator[Batch]:
        """Pipelined sends: inside the block `send()` returns the id at once; the exit
        stores them all (one enqueue per queue) and raises BatchNotStored, naming the
        tasks, if any was not stored. Left by an exception, the block stores nothing.
        Nested blocks join the outermost one. See ebbtide/batch.py."""
        current = self._batch.get()
        if current is not None:
            current.depth += 1
            try:
                yield current
            finally:
                current.depth -= 1
            return
        batch = Batch()
        token = self._batch.set(batch)
        try:
            yield batch
        finally:
            self._batch.reset(token)
        # Only a clean exit gets here: an exception in the block skips the flush.
        batch.flush(lambda: self.broker, int(self.unique_ttl * 1000))

    def close(self) -> None:
        if self._broker is not None:
            self._broker.close()


class Task:
    """The handle `@app.task` returns. Calling it runs the function here and now."""

    def __init__(
        self,
        app: App,
        fn: Callable[..., Any],
        name: str,
        queue: str,
        max_retries: int,
        timeout: float | None,
        priority: int,
        rate: str | None,
        max_recoveries: int = 3,
        *,
        validate: bool = True,
        schema: Mapping[str, Any] | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.app, self.fn, self.name, self.queue = app, fn, name, queue
        if max_recoveries < 0:
            raise ValueError(f"max_recoveries must be >= 0, got {max_recoveries}")
        self.max_retries, self.timeout, self.priority = max_retries, timeout, priority
        # Runs lost with their worker (a crash, a lost lease) before the task is buried.
        self.max_recoveries = max_recoveries
        self.rate = parse_rate(rate) if rate else None
        self.is_async = inspect.iscoroutinefunction(fn)
        # The one argument check, shared by send() and the worker.
        self.arguments = ArgumentCheck(name, fn, hints=validate, schema=schema)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<ebbtide task {self.name} queue={self.queue}>"

    def options(
        self,
        *,
        delay: float | None = None,
        priority: int | None = None,
        key: str | None = None,
        queue: str | None = None,
        shard_key: str | None = None,
    ) -> TaskCall:
        """Per-call options. `key`: a unique task (a duplicate of a pending one is not
        stored). `shard_key`: the shard of a sharded queue is picked by this key's hash
        (by `key`'s when only that is given; round-robin when neither is), so tasks with
        one shard key share a shard. `send()`'s own keyword arguments are the task's."""
        if shard_key is not None and (not isinstance(shard_key, str) or not shard_key):
            raise ValueError(f"shard_key must be a non-empty string, got {shard_key!r}")
        if shard_key is not None and key is not None:
            raise ValueError(
                f"task {self.name!r}: pass key= or shard_key=, not both: a keyed (unique) "
                "task goes to the shard its key picks, so that its duplicates meet there"
            )
        return TaskCall(
            self,
            delay or 0.0,
            self.priority if priority is None else check_priority(priority),
            key,
            check_queue(queue) if queue else self.queue,
            shard_key,
        )

    def send(self, *args: Any, **kwargs: Any) -> str:
        return self.options().send(*args, **kwargs)

    def send_many(self, items: Iterable[Any]) -> list[str]:
        return self.options().send_many(items)


@dataclass(frozen=True)
class TaskCall:
    """A task with per-call options bound: `task.options(delay=5).send(...)`."""

    task: Task
    delay: float
    priority: int
    key: str | None
    queue: str
    shard_key: str | None = None

    def send(self, *args: Any, **kwargs: Any) -> str:
        """Enqueue one task; returns its id (for a duplicate `key=`, the pending one's id).
        The current trace context goes with it (tracing.py)."""
        return self._enqueue([self._outgoing(args, kwargs, tracing.context_field())], self.key)[0]

    def send_many(self, items: Iterable[Any]) -> list[str]:
        """Pipelined bulk enqueue, in order. Each item is a tuple of args, or
        (args, kwargs); a non-tuple item is a single argument."""
        if self.key:
            raise ValueError("send_many() cannot share one key=; send keyed tasks one by one")
        trace = tracing.context_field()  # one context for the whole batch
        return self._enqueue([self._outgoing(*_split_item(i), trace) for i in items], None)

    def _outgoing(
        self, args: tuple | list, kwargs: dict[str, Any], trace: dict[str, Any]
    ) -> Outgoing:
        self.task.arguments.check(args, kwargs)  # InvalidArguments names the argument
        task_id = new_task_id()
        app = self.task.app
        extra = {"key": self.key, **trace} if self.key else trace
        payload = encode_payload(
            task_id, self.task.name, args, kwargs, app.max_payload_bytes, codec=app.codec, **extra
        )
        return Outgoing(task_id, self.priority, int(self.delay * 1000), self.key or "", payload)

    def _enqueue(self, messages: list[Outgoing], key: str | None) -> list[str]:
        if not messages:
            return []
        app = self.task.app
        config = app.queues.get(self.queue)
        max_backlog = config.max_backlog if config else 0
        shards = app.shard_count(self.queue)
        if shards > 1 and max_backlog:
            max_backlog = -(-max_backlog // shards)  # the limit is per broker queue
        pin = self.shard_key if self.shard_key is not None else self.key
        batch = app._batch.get()
        if shards == 1 or pin is not None:  # one broker queue: the call as it came
            queue = app.pick_shard(self.queue, pin)
            if batch is not None:
                return self._buffer(batch, {queue: messages}, max_backlog, messages)
            return self._store(queue, messages, max_backlog, [])
        groups = self._by_shard(messages)
        if batch is not None:
            by_queue = {q: [m for _, m in items] for q, items in groups.items()}
            return self._buffer(batch, by_queue, max_backlog, messages)
        if len(groups) == 1:
            ((queue, _),) = groups.items()
            return self._store(queue, messages, max_backlog, [])
        return self._store_sharded(groups, max_backlog, len(messages))

    def _by_shard(self, messages: list[Outgoing]) -> dict[str, list[tuple[int, Outgoing]]]:
        """Round-robin: the messages per broker queue, with their place in the call."""
        app = self.task.app
        groups: dict[str, list[tuple[int, Outgoing]]] = {}
        for i, m in enumerate(messages):
            groups.setdefault(app.pick_shard(self.queue, None), []).append((i, m))
        return groups

    def _store(
        self, queue: str, messages: list[Outgoing], max_backlog: int, stored: list[str]
    ) -> list[str]:
        """Enqueue to one broker queue; `stored`: ids other shards took in this call."""
        app = self.task.app
        replies = app.broker.enqueue(queue, messages, max_backlog, int(app.unique_ttl * 1000))
        ids: list[str] = []
        for reply in replies:
            if reply == "!full":
                raise BacklogFull(queue, max_backlog, accepted=len(stored) + len(ids))
            ids.append(reply[1:] if reply.startswith("=") else reply)
        return ids

    def _store_sharded(
        self, groups: dict[str, list[tuple[int, Outgoing]]], max_backlog: int, total: int
    ) -> list[str]:
        """send_many over several shards: one enqueue per shard, the ids back in the
        call's order. A failure part-way is PartiallyEnqueued naming every stored id."""
        ids: list[str] = [""] * total
        stored: list[str] = []
        for queue, items in groups.items():
            try:
                got = self._store(queue, [m for _, m in items], max_backlog, stored)
            except PartiallyEnqueued as exc:
                error = exc.__cause__ or exc
                raise PartiallyEnqueued(self.queue, stored + exc.accepted, total, error) from error
            except BacklogFull:
                raise
            except Exception as exc:
                if not stored:
                    raise
                raise PartiallyEnqueued(self.queue, stored, total, exc) from exc
            for (i, _), task_id in zip(items, got, strict=True):
                ids[i] = task_id
            stored.extend(got)
        return ids

    def _buffer(
        self,
        batch: Batch,
        groups: Mapping[str, list[Outgoing]],
        max_backlog: int,
        messages: list[Outgoing],
    ) -> list[str]:
        """Inside `app.batch()`: the ids now, the round trip (one per shard) at the
        block's exit."""
        if self.key:
            raise ValueError(
                f"task {self.task.name!r}: a keyed send (key={self.key!r}) cannot go in "
                "app.batch(), as its id is only known once the broker has de-duplicated "
                "it; send it outside the block"
            )
        for queue, items in groups.items():
            batch.add(queue, max_backlog, self.task.name, items)
        return [m.task_id for m in messages]


def _split_item(item: Any) -> tuple[tuple | list, dict[str, Any]]:
    if (
        isinstance(item, tuple | list)
        and len(item) == 2
        and isinstance(item[0], tuple | list)
        and isinstance(item[1], dict)
    ):
        return item[0], item[1]
    if isinstance(item, tuple | list):
        return item, {}
    return (item,), {}
