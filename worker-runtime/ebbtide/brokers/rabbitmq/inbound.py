"""A patch of pika internals, kept alone here as transport.py is: the consuming
connection reads each task delivery in one pass.

Why. For every frame, pika builds objects (a Method, a Header holding BasicProperties, a
Body), passes each one through its callback manager and its channel's content assembler,
and trims its receive buffer, copying the rest of the buffer each time. A task delivery
is three frames: pika 1.4 spends 13-17 us of the worker's loop on one, against 7-8 us
here (`make bench-amqp-decode`), and that loop shares one GIL with the task threads.

What. `decode_delivery` reads a Basic.Deliver with its header and body frames in place,
at an offset into the received bytes. `FastDeliveries` sits where pika's
`_on_data_available` was: it hands such a delivery to the consumer's callback exactly as
pika's Channel would, with the same values. Any other frame goes through pika's own
decoding and dispatch, one frame at a time and unchanged. So do the deliveries this code
does not vouch for: a cancelled or unknown consumer, a continued property-flags word, or
frames out of order. The socket is also read 64 KiB at a time instead of pika's 4 KiB:
each `recv` releases the GIL, and parsing in place makes a large buffer cheap.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from pika import frame, spec
from pika.data import decode_short_string as _short_string
from pika.data import decode_table

FRAME_HEADER = struct.Struct(">BHI")  # type, channel, payload size
HEADER_FIELDS = struct.Struct(">HHQH")  # class id, weight, body size, property flags
TAG_AND_BITS = struct.Struct(">QB")
LONGLONG = struct.Struct(">Q")
METHOD_ID = struct.Struct(">I")
DELIVER_ID = spec.Basic.Deliver.INDEX
BASIC_CLASS = spec.Basic.INDEX
FRAME_END = spec.FRAME_END
FRAME_OVERHEAD = 8  # the 7-byte frame header and the end octet
RECV_BYTES = 64 * 1024
# A delivery still arriving is held whole until this many bytes are waiting; a larger
# one is left to pika, which keeps the frames that have come (no copy per recv).
HELD_MAX = 4 * RECV_BYTES

INCOMPLETE = -1  # the delivery's frames have not all arrived yet
NOT_MINE = 0  # not a delivery this module decodes: pika's own path takes the frame


class Deliver(NamedTuple):
    """The fields of pika.spec.Basic.Deliver, under the same names."""

    consumer_tag: str
    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str


class Properties(NamedTuple):
    """The fields of pika.spec.BasicProperties, under the same names, in flag order."""

    content_type: str | None = None
    content_encoding: str | None = None
    headers: dict | None = None
    delivery_mode: int | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    timestamp: int | None = None
    type: str | None = None
    user_id: str | None = None
    app_id: str | None = None
    cluster_id: str | None = None


# How each property is encoded, from the flags word's top bit down (AMQP 0-9-1, 4.2.6.1).
_SHORTSTR, _TABLE, _OCTET, _LONGLONG = range(4)
_PROPERTY_KINDS = (
    _SHORTSTR, _SHORTSTR, _TABLE, _OCTET, _OCTET, _SHORTSTR, _SHORTSTR,
    _SHORTSTR, _SHORTSTR, _LONGLONG, _SHORTSTR, _SHORTSTR, _SHORTSTR, _SHORTSTR,
)  # fmt: skip
_FLAG_BITS = tuple(1 << (15 - i) for i in range(len(_PROPERTY_KINDS)))


def _properties(buf: bytes, at: int, flags: int) -> tuple[Properties, int]:
    """The properties present in `flags`, and the offset after them. pika's own
    `decode_table` reads the headers table, most of the time this takes."""
    values: list[Any] = []
    for bit, kind in zip(_FLAG_BITS, _PROPERTY_KINDS, strict=True):
        if not flags & bit:
            values.append(None)
        elif kind == _SHORTSTR:
            value, at = _short_string(buf, at)
            values.append(value)
        elif kind == _OCTET:
            values.append(buf[at])
            at += 1
        elif kind == _LONGLONG:
            values.append(LONGLONG.unpack_from(buf, at)[0])
            at += 8
        else:
            table, at = decode_table(buf, at)
            values.append(table)
    return Properties(*values), at


class Decoded(NamedTuple):
    channel: int
    method: Deliver
    properties: Properties
    body: bytes
    frames: int  # how many frames it took (pika counts frames received)


def decode_delivery(buf: bytes, at: int) -> tuple[int, Decoded | None]:
    """The delivery whose method frame starts at `at`: (end offset, Decoded) once all
    its frames are in `buf`; (INCOMPLETE, None) while some are still to come;
    (NOT_MINE, None) if the frame there is not a Basic.Deliver that this function reads
    (pika's own path then takes it, and reports any protocol error)."""
    n = len(buf)
    if n - at < 7 or buf[at] != spec.FRAME_METHOD:
        return NOT_MINE, None  # pika's path waits for a whole frame of its own
    if n - at < 11:
        return INCOMPLETE, None  # which method it is comes next
    _, channel, size = FRAME_HEADER.unpack_from(buf, at)
    end = at + FRAME_OVERHEAD + size
    if METHOD_ID.unpack_from(buf, at + 7)[0] != DELIVER_ID:
        return NOT_MINE, None
    if end > n:
        return INCOMPLETE, None
    if buf[end - 1] != FRAME_END:
        return NOT_MINE, None
    p = at + 11
    consumer_tag, p = _short_string(buf, p)
    delivery_tag, bits = TAG_AND_BITS.unpack_from(buf, p)
    exchange, p = _short_string(buf, p + 9)
    routing_key, p = _short_string(buf, p)
    if p != end - 1:
        return NOT_MINE, None
    method = Deliver(consumer_tag, delivery_tag, bool(bits & 1), exchange, routing_key)
    # The content header frame.
    at = end
    if n - at < FRAME_OVERHEAD:
        return INCOMPLETE, None
    kind, on, size = FRAME_HEADER.unpack_from(buf, at)
    if kind != spec.FRAME_HEADER or on != channel or size < 14:
        return NOT_MINE, None
    end = at + FRAME_OVERHEAD + size
    if end > n:
        return INCOMPLETE, None
    class_id, _weight, body_size, flags = HEADER_FIELDS.unpack_from(buf, at + 7)
    if buf[end - 1] != FRAME_END or class_id != BASIC_CLASS or flags & 1:
        return NOT_MINE, None  # flags & 1: another flags word follows (pika reads it)
    properties, p = _properties(buf, at + 21, flags)
    if p != end - 1:
        return NOT_MINE, None
    # The body frames, until body_size bytes.
    at, parts, got, frames = end, [], 0, 2
    while got < body_size:
        if n - at < FRAME_OVERHEAD:
            return INCOMPLETE, None
        kind, on, size = FRAME_HEADER.unpack_from(buf, at)
        if kind != spec.FRAME_BODY or on != channel:
            return NOT_MINE, None
        end = at + FRAME_OVERHEAD + size
        if end > n:
            return INCOMPLETE, None
        if buf[end - 1] != FRAME_END:
            return NOT_MINE, None
        parts.append(buf[at + 7 : end - 1])
        got, at, frames = got + size, end, frames + 1
    if got != body_size:
        return NOT_MINE, None
    body = parts[0] if len(parts) == 1 else b"".join(parts)
    return at, Decoded(channel, method, properties, body, frames)


class FastDeliveries:
    """Installed on one pika connection: task deliveries decoded in one pass, all else
    through pika (see the module docstring)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.decoded = 0  # deliveries read here (logged when the worker stops)
        conn._on_data_available  # noqa: B018 - these must exist
        conn._frame_buffer  # noqa: B018
        conn._channels  # noqa: B018
        conn._process_frame  # noqa: B018

    @classmethod
    def install(cls, conn: Any) -> FastDeliveries | None:
        """Patch `conn` (pika 1.x); None, leaving pika's path alone, if its internals
        are not the ones this module knows."""
        try:
            self = cls(conn)
        except AttributeError:
            return None
        conn._on_data_available = self.data_received
        transport = getattr(conn, "_transport", None)
        if transport is not None and hasattr(transport, "_MAX_RECV_BYTES"):
            transport._MAX_RECV_BYTES = RECV_BYTES
        return self

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        buf = conn._frame_buffer + data if conn._frame_buffer else data
        conn._frame_buffer = b""
        at, n = 0, len(buf)
        while at < n:
            end, decoded = decode_delivery(buf, at)
            if decoded is not None and self._dispatch(decoded):
                conn.bytes_received += end - at
                at = end
                continue
            if end == INCOMPLETE and n - at <= HELD_MAX:
                break
            # One frame through pika's own path, exactly as its loop would take it. The
            # rest is copied into pika's buffer first, so that a reset of it (the
            # connection going) ends this read as it ends pika's; such frames are rare
            # here (heartbeats, RPC replies, a cancelled consumer's deliveries).
            if n - at < 7:
                break
            size = FRAME_HEADER.unpack_from(buf, at)[2]
            if at + FRAME_OVERHEAD + size > n:
                break
            consumed, value = frame.decode_frame(buf[at : at + FRAME_OVERHEAD + size])
            if not value:
                break
            conn.bytes_received += consumed
            rest = conn._frame_buffer = buf[at + consumed :]
            conn._process_frame(value)
            if conn._frame_buffer is not rest:
                return  # pika reset its buffer (the connection is going): as pika would
            buf, at, n = rest, 0, len(rest)
            conn._frame_buffer = b""
        conn._frame_buffer = buf[at:] if at < n else b""

    def _dispatch(self, d: Decoded) -> bool:
        """Call the consumer as pika's Channel._on_deliver would; False when pika must
        (a closed channel, a cancelled or unknown consumer, a half-assembled content)."""
        channel = self.conn._channels.get(d.channel)
        if channel is None or not channel.is_open:
            return False
        tag = d.method.consumer_tag
        callback = channel._consumers.get(tag)
        if callback is None or tag in channel._cancelled:
            return False
        if channel._content_assembler._method_frame is not None:
            return False
        self.conn.frames_received += d.frames
        self.decoded += 1
        callback(channel, d.method, d.properties, d.body)
        return True
