"""Task deliveries read in one pass (inbound.py) must read exactly what pika reads, and
leave every other frame, in order, to pika's own path: checked against pika's own
encoder and decoder, over every way the bytes can be split into recvs."""

from __future__ import annotations

from types import SimpleNamespace

import pika
import pytest
from ebbtide.brokers.rabbitmq import inbound
from ebbtide.brokers.rabbitmq.inbound import (
    INCOMPLETE,
    NOT_MINE,
    Deliver,
    FastDeliveries,
    Properties,
    decode_delivery,
)
from ebbtide.brokers.rabbitmq.publish import task_message
from pika import frame, spec

TAG = "ctag1.0123456789abcdef"


def deliver(tag: int, body: bytes, props: pika.BasicProperties | None = None, **method) -> bytes:
    """One delivery as RabbitMQ sends it, marshalled by pika itself (its body split into
    frames of at most `max_body` bytes)."""
    max_body = method.pop("max_body", 1 << 20)
    channel = method.pop("channel", 1)
    fields = {"consumer_tag": TAG, "delivery_tag": tag, "redelivered": False}
    fields |= {"exchange": "", "routing_key": "ebbtide.default", **method}
    props = props or pika.BasicProperties()
    out = frame.Method(channel, spec.Basic.Deliver(**fields)).marshal()
    out += frame.Header(channel, len(body), props).marshal()
    for i in range(0, len(body), max_body):
        out += frame.Body(channel, body[i : i + max_body]).marshal()
    return out


def pika_reads(data: bytes) -> list:
    """What pika's own decoder makes of `data`, frame by frame."""
    frames, at = [], 0
    while at < len(data):
        used, value = frame.decode_frame(data[at:])
        frames.append(value)
        at += used
    return frames


FULL = pika.BasicProperties(
    content_type="application/json",
    content_encoding="zstd",
    headers={"x-ebbtide-ready-ms": 1796313263123, "nested": {"a": [1, "two", True]}, "n": -7},
    delivery_mode=2,
    priority=7,
    correlation_id="corr",
    reply_to="back",
    expiration="60000",
    message_id="0f3c2a9e8b7d4c1a",
    timestamp=1796313263,
    type="t",
    user_id="guest",
    app_id="ebbtide",
    cluster_id="c",
)
CASES = {
    "no properties": pika.BasicProperties(),
    "a task's": task_message("ebbtide", "default", 3, 0, "0f3c2a9e8b7d4c1a")[2],
    "every property": FULL,
    "a non-UTF-8 message id": pika.BasicProperties(message_id=b"\xff\xfe"),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("props", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("body", [b"", b'{"id":"x"}', bytes(range(256)) * 40])
def test_a_delivery_reads_as_pika_reads_it(props, body):
    data = deliver(9, body, props, redelivered=True, max_body=1000)
    end, got = decode_delivery(data, 0)
    method, header, *bodies = pika_reads(data)
    assert end == len(data) and got is not None
    assert got.frames == 2 + len(bodies) and got.channel == 1
    assert got.method == Deliver(**vars(method.method))
    assert got.properties == Properties(**vars(header.properties))
    assert got.body == b"".join(b.fragment for b in bodies) == body


def test_a_delivery_not_all_here_yet_is_incomplete_at_every_cut():
    data = deliver(1, b"x" * 300, CASES["a task's"], max_body=100)
    assert [decode_delivery(data[:cut], 0)[0] for cut in range(7, len(data))] == [INCOMPLETE] * (
        len(data) - 7
    )
    assert decode_delivery(data, 0)[0] == len(data)


def test_what_it_does_not_read_is_left_to_pika():
    heartbeat = frame.Heartbeat().marshal()
    consume_ok = frame.Method(1, spec.Basic.ConsumeOk(TAG)).marshal()
    continued = bytearray(deliver(1, b"x"))
    header_at = len(
        frame.Method(1, spec.Basic.Deliver(TAG, 1, False, "", "ebbtide.default")).marshal()
    )
    continued[header_at + 7 + 12 + 1] |= 1  # bit 0 of the flags: another flags word follows
    for data in (heartbeat, consume_ok, bytes(continued), heartbeat[:3]):
        assert decode_delivery(data, 0) == (NOT_MINE, None)


class Assembler:
    _method_frame = None


class Channel:
    """What FastDeliveries reads of a pika Channel."""

    def __init__(self) -> None:
        self.is_open = True
        self.got: list = []
        self._consumers = {TAG: lambda ch, m, p, b: self.got.append((m, p, b))}
        self._cancelled: set = set()
        self._content_assembler = Assembler()


class Connection:
    """What FastDeliveries reads of a pika Connection; `_process_frame` (pika's own
    path) records the frames it is given."""

    def __init__(self) -> None:
        self._frame_buffer = b""
        self.channel = Channel()
        self._channels = {1: self.channel}
        self.bytes_received = self.frames_received = 0
        self.by_pika: list = []
        self._on_data_available = None

    def _process_frame(self, value) -> None:
        self.frames_received += 1
        self.by_pika.append(value)


def stream() -> tuple[bytes, int]:
    """Deliveries with a heartbeat, an RPC reply and a multi-frame body among them."""
    parts = [deliver(1, b"a", CASES["a task's"]), frame.Heartbeat().marshal()]
    parts += [deliver(2, b"b" * 5000, FULL, max_body=1024)]
    parts += [frame.Method(1, spec.Basic.QosOk()).marshal(), deliver(3, b"", CASES["a task's"])]
    return b"".join(parts), 3


@pytest.mark.parametrize("chunk", [1, 2, 7, 8, 11, 64, 1000, 1 << 20])
def test_every_split_gives_the_same_calls_in_the_same_order(chunk):
    data, deliveries = stream()
    conn = Connection()
    fast = FastDeliveries.install(conn)
    assert fast is not None
    for i in range(0, len(data), chunk):
        conn._on_data_available(data[i : i + chunk])
    got = conn.channel.got
    assert [m.delivery_tag for m, _p, _b in got] == [1, 2, 3]
    assert [b for _m, _p, b in got] == [b"a", b"b" * 5000, b""]
    assert got[1][1] == Properties(**vars(FULL))
    assert [type(f) for f in conn.by_pika] == [frame.Heartbeat, frame.Method]
    assert isinstance(conn.by_pika[1].method, spec.Basic.QosOk)
    assert conn.bytes_received == len(data) and conn._frame_buffer == b""
    assert conn.frames_received == 3 + 1 + 7 + 1 + 2 and fast.decoded == deliveries


def test_a_cancelled_consumer_s_delivery_goes_to_pika_which_rejects_it():
    conn = Connection()
    FastDeliveries.install(conn)
    conn.channel._cancelled.add(TAG)
    data = deliver(4, b"late")
    conn._on_data_available(data)
    assert conn.channel.got == []
    assert [type(f) for f in conn.by_pika] == [frame.Method, frame.Header, frame.Body]
    assert conn.bytes_received == len(data)


def test_a_big_delivery_still_arriving_is_left_to_pika_frame_by_frame():
    body = b"z" * (inbound.HELD_MAX + 10)
    data = deliver(5, body, max_body=128 * 1024)
    conn = Connection()
    FastDeliveries.install(conn)
    conn._on_data_available(data[: inbound.HELD_MAX + 100])  # not all of it yet
    assert [type(f) for f in conn.by_pika][:3] == [frame.Method, frame.Header, frame.Body]
    assert len(conn._frame_buffer) < 128 * 1024 + 8  # only a frame's worth held


def test_pika_resetting_its_buffer_ends_the_read_as_pika_would():
    conn = Connection()
    FastDeliveries.install(conn)

    def closing(value) -> None:
        conn.by_pika.append(value)
        conn._frame_buffer = b""  # pika's connection state reset (it is going)

    conn._process_frame = closing
    conn._on_data_available(frame.Heartbeat().marshal() + deliver(6, b"after"))
    assert conn.channel.got == [] and len(conn.by_pika) == 1


def test_install_leaves_an_unknown_connection_alone():
    assert FastDeliveries.install(SimpleNamespace()) is None
