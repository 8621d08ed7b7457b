"""A patch of pika internals, alone here because it is one: socket writes that skip
pika's per-frame write queue, and a `corked` batch of frames that leaves in one send."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class WriteThrough:
    """Make the connection's writes try the socket at once, and let a batch of frames
    (`corked`) leave in one send.

    pika's own transport queues every write and sends it on the next loop iteration,
    after registering a writability watcher and before removing it again: two epoll_ctl
    calls and one send per frame, each of which releases the GIL, which a loop competing
    with task threads pays for dearly (see docs/benchmarks.md). The socket is nearly
    always writable, so send now and queue only what the kernel did not take (order is
    kept: anything already queued goes first). This leans on pika 1.x internals of the
    plaintext transport; when they are not there (TLS, another pika), `install` returns
    None and pika's own path is used unchanged."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.queued = transport._tx_buffers
        self.sock = transport._sock
        self.active = transport._STATE_ACTIVE
        self.queue_write = transport.write
        self.batch: list[bytes] | None = None
        transport._state  # noqa: B018 - must exist

    @classmethod
    def install(cls, conn: Any) -> WriteThrough | None:
        transport = getattr(conn, "_transport", None)
        if type(transport).__name__ != "_AsyncPlaintextTransport":
            return None
        try:
            self = cls(transport)
        except AttributeError:
            return None
        transport.write = self.write
        return self

    def write(self, data: bytes) -> None:
        if self.batch is not None:
            self.batch.append(data)
        else:
            self._send(data)

    def _send(self, data: bytes) -> None:
        if self.queued or self.transport._state != self.active:
            self.queue_write(data)
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.queue_write(data)  # pika's own path reports the failure and aborts
            return
        if sent < len(data):
            self.queue_write(data[sent:])

    @contextlib.contextmanager
    def corked(self) -> Iterator[None]:
        if self.batch is not None:
            yield
            return
        self.batch = []
        try:
            yield
        finally:
            batch, self.batch = self.batch, None
            if batch:
                self._send(b"".join(batch))


def corked(writes: WriteThrough | None) -> contextlib.AbstractContextManager[None]:
    """`writes.corked()`, or nothing when the patch is not installed."""
    return writes.corked() if writes is not None else contextlib.nullcontext()
