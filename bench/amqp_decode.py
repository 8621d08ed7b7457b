"""CPU per task delivery read off the wire: pika's per-frame path against inbound.py's.

The bytes are what RabbitMQ sends a worker for 20,000 task deliveries: a Basic.Deliver,
its content header (a task's properties and headers) and its body, marshalled by pika
itself. They are fed, in socket-sized reads, to a real pika Connection and Channel
with no socket under them:

* pika: the connection's own `_on_data_available`, which the channel's consumer is
  called from;
* inbound: the same connection with `FastDeliveries` installed, as the worker's
  consuming link has it.

Both call the same no-op consumer. The benchmark prints microseconds of CPU per delivery
for each, the best of 5 passes, and their ratio. It does this for pika's 4 KiB reads
and for the worker's 64 KiB.

    .venv/bin/python bench/amqp_decode.py
"""

from __future__ import annotations

import argparse
import time

from ebbtide.brokers.rabbitmq.inbound import FastDeliveries
from ebbtide.brokers.rabbitmq.publish import task_message
from pika import frame, spec
from pika.callback import CallbackManager
from pika.channel import Channel
from pika.connection import Connection

TAG = "ctag1.0123456789abcdef"
BODY = b'{"id":"0f3c2a9e8b7d4c1a9e8b7d4c1a9e8b7d","task":"bench.incr","args":[],"kwargs":{}}'
# A task's properties, as the producer sets them.
PROPS = task_message("ebbtide", "bench", 0, 0, "0f3c2a9e8b7d4c1a9e8b7d4c1a9e8b7d")[2]


def wire(n: int) -> bytes:
    out = []
    for tag in range(1, n + 1):
        deliver = spec.Basic.Deliver(TAG, tag, False, "", "ebbtide.bench")
        out += [frame.Method(1, deliver).marshal(), frame.Header(1, len(BODY), PROPS).marshal()]
        out.append(frame.Body(1, BODY).marshal())
    return b"".join(out)


class OfflineConnection(Connection):
    """pika's Connection with no socket under it: only its inbound path is used."""

    def __init__(self) -> None:  # not Connection's: that one starts connecting
        self._frame_buffer = b""
        self.bytes_received = self.frames_received = 0
        self._heartbeat_checker = None
        self.callbacks = CallbackManager()
        self._channels = {}

    def _adapter_call_later(self, delay, callback): ...
    def _adapter_remove_timeout(self, timeout_id): ...
    def _adapter_add_callback_threadsafe(self, callback): ...
    def _adapter_connect_stream(self): ...
    def _adapter_disconnect_stream(self): ...
    def _adapter_emit_data(self, data): ...
    def _adapter_get_write_buffer_size(self) -> int:
        return 0


def consuming(consumer) -> OfflineConnection:
    conn = OfflineConnection()
    channel = Channel(conn, 1, None)
    channel._set_state(Channel.OPEN)
    channel._consumers[TAG] = consumer
    conn._channels[1] = channel
    return conn


def pika_path(data: bytes, chunk: int, consumer) -> None:
    conn = consuming(consumer)
    for i in range(0, len(data), chunk):
        conn._on_data_available(data[i : i + chunk])


def inbound_path(data: bytes, chunk: int, consumer) -> None:
    conn = consuming(consumer)
    reader = FastDeliveries.install(conn)
    assert reader is not None
    for i in range(0, len(data), chunk):
        conn._on_data_available(data[i : i + chunk])
    assert reader.decoded == conn.frames_received // 3


def cpu_us(path, data: bytes, chunk: int, n: int, passes: int) -> float:
    best = float("inf")
    for _ in range(passes):
        got: list[bytes] = []
        start = time.process_time()
        path(data, chunk, lambda _c, _m, _p, body, got=got: got.append(body))
        best = min(best, time.process_time() - start)
        assert len(got) == n and got[-1] == BODY
    return best / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deliveries", type=int, default=20_000)
    parser.add_argument("--passes", type=int, default=5)
    opts = parser.parse_args()
    data = wire(opts.deliveries)
    print(f"{opts.deliveries:,} deliveries, {len(data) // opts.deliveries} bytes each")
    print("| reads of | pika us/delivery | inbound.py us/delivery | pika / inbound |")
    print("|---|---|---|---|")
    for chunk in (4096, 65536):  # pika's recv size, and the worker's
        slow = cpu_us(pika_path, data, chunk, opts.deliveries, opts.passes)
        fast = cpu_us(inbound_path, data, chunk, opts.deliveries, opts.passes)
        print(f"| {chunk // 1024} KiB | {slow:.1f} | {fast:.1f} | {slow / fast:.1f}x |")


if __name__ == "__main__":
    main()
