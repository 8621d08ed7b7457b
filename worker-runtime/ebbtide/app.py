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
from .errors import BacklogFull
from .lifecycle import parse_rate
from .message import check_priority, check_queue, encode_payload, new_task_id
from .validation import ArgumentCheck

DEFAULT_QUEUE = "default"


@dataclass(frozen=True)
class QueueConfig:
    name: str
    max_backlog: int = 0  # 0 = unbounded


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
    ) -> None:
        """`serializer` ("json" or "msgpack") and `compress_threshold` (zstd above this
        many bytes of arguments, None = never) shape what this app sends; any worker reads
        any format. `encryption_keys` ({key id: 32-byte key, raw or base64}; default: the
        files of $EBBTIDE_ENCRYPTION_KEYS_DIR, a mounted Secret) are all read with, and
        `encrypt_with` (default: $EBBTIDE_ENCRYPT_WITH, or the only key) seals what is sent;
        `encryption_required` makes a worker bury every task that is not encrypted
        (docs/runtime.md, "Payload formats" and "Encryption")."""
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

    def queue(self, name: str, *, max_backlog: int = 0) -> QueueConfig:
        """Declare queue options; `send()` past `max_backlog` raises BacklogFull."""
        if max_backlog < 0:
            raise ValueError(f"max_backlog must be >= 0, got {max_backlog}")
        config = self.queues[name] = QueueConfig(check_queue(name), max_backlog)
        return config

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
    ) -> Any:
        """Register a def or async def as a task: `@app.task` or `@app.task(queue=...)`.
        Its arguments are checked against its signature and type hints at `send()` and
        in the worker (`validate=False` opts out), and against `schema`, a JSON Schema
        of the arguments by name, when given (docs/runtime.md, "Payload validation")."""

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
    ) -> TaskCall:
        return TaskCall(
            self,
            delay or 0.0,
            self.priority if priority is None else check_priority(priority),
            key,
            check_queue(queue) if queue else self.queue,
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
        batch = app._batch.get()
        if batch is not None:
            return self._buffer(batch, messages, max_backlog)
        replies = app.broker.enqueue(self.queue, messages, max_backlog, int(app.unique_ttl * 1000))
        ids: list[str] = []
        for reply in replies:
            if reply == "!full":
                raise BacklogFull(self.queue, max_backlog, accepted=len(ids))
            ids.append(reply[1:] if reply.startswith("=") else reply)
        return ids

    def _buffer(self, batch: Batch, messages: list[Outgoing], max_backlog: int) -> list[str]:
        """Inside `app.batch()`: the ids now, the round trip at the block's exit."""
        if self.key:
            raise ValueError(
                f"task {self.task.name!r}: a keyed send (key={self.key!r}) cannot go in "
                "app.batch(), as its id is only known once the broker has de-duplicated "
                "it; send it outside the block"
            )
        batch.add(self.queue, max_backlog, self.task.name, messages)
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
