"""Message encoding: the JSON envelope of a task and the compact queue entries that point
at it.

Pure functions only (no I/O), so they are unit-tested directly. The envelope is one line
of JSON and nothing else: no pickle, so a message can never execute code when it is
decoded. Its arguments are either plain (`"args":[...],"kwargs":{...}`) or an encoded
body (codec.py: `"args":null,"fmt":"msgpack+zstd","body":"<base64>"`); every other field
(id, task, key, trace, attempt, error, ...) stays plain JSON for the brokers' scripts
and the worker's bookkeeping.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from .codec import PLAIN, Codec, UnreadableBody, argument_problem, serialize
from .errors import BadPayload, PayloadTooLarge

MAX_PRIORITY = 9  # priorities are 0 (default, lowest) .. 9 (runs first)

_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode


@dataclass(frozen=True, slots=True)
class Entry:
    """A queue entry "<ready_ms>|<prio>|<handle>", the one format both brokers use for
    `Delivery.entry`: it carries its own age, so the oldest ready task's age costs one
    LINDEX, and its priority, so it can be put back. The handle is the broker's own
    (Redis: the task id; RabbitMQ: "<channel generation>.<delivery tag>")."""

    ready_ms: int
    priority: int
    task_id: str


def parse_entry(raw: str) -> Entry | None:
    """The only parser of an entry in Python (the Lua twin is `split_entry`); None when
    malformed."""
    parts = raw.split("|", 2)
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    return Entry(int(parts[0]), int(parts[1]), parts[2])


class _Ids:
    """Task ids: a random 64-bit prefix per process plus a counter (uuid4 per task costs a
    syscall). Re-seeded in a forked child, so parent and child never share a sequence."""

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count()

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


new_task_id = _Ids()


_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,200}")


# Names Ebbtide's own RabbitMQ queues use beside `<prefix>.<queue>` (brokers/rabbitmq/
# topology.py): an app queue `x.dead` would be the DLQ of `x`, `worker.<id>` a heartbeat.
RESERVED_PREFIXES = ("worker.", "rate.")
RESERVED_SUFFIXES = (".dead", ".lost")
RESERVED_INFIXES = (".delay.", ".wait.")
RESERVED_RULE = (
    "queue names may not start with 'worker.' or 'rate.', end with '.dead' or '.lost', "
    "or contain '.delay.' or '.wait.'"
)


def reserved_queue_name(name: str) -> str | None:
    """Why `name` would collide with one of Ebbtide's own queues, or None."""
    for head in RESERVED_PREFIXES:
        if name.startswith(head):
            return f"it starts with {head!r}"
    for tail in RESERVED_SUFFIXES:
        if name.endswith(tail):
            return f"it ends with {tail!r}"
    for part in RESERVED_INFIXES:
        if part in name:
            return f"it contains {part!r}"
    return None


def is_queue_name(name: object) -> bool:
    """The one queue-name rule: names end up in Redis keys, AMQP queue names (255 bytes
    at most, with our prefix and suffixes) and reply framing, so keep them plain, and
    clear of the names Ebbtide's own queues use."""
    return (
        isinstance(name, str)
        and _QUEUE_NAME.fullmatch(name) is not None
        and reserved_queue_name(name) is None
    )


def check_queue(name: str) -> str:
    if isinstance(name, str) and (why := reserved_queue_name(name)) is not None:
        raise ValueError(
            f"queue name {name!r} is reserved: {why}, which would collide with Ebbtide's "
            f"own queues ({RESERVED_RULE})"
        )
    if not is_queue_name(name):
        raise ValueError(f"bad queue name {name!r}: use letters, digits, '_', '.', '-'")
    return name


def check_priority(priority: int) -> int:
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise TypeError(f"priority must be an int 0..{MAX_PRIORITY}, got {priority!r}")
    if not 0 <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority must be 0..{MAX_PRIORITY}, got {priority}")
    return priority


def encode_payload(
    task_id: str,
    task: str,
    args: tuple | list,
    kwargs: dict[str, Any],
    limit: int,
    *,
    codec: Codec = PLAIN,
    **extra: Any,
) -> str:
    """The JSON envelope of one task, always starting with {"id":"<id>" (the enqueue script
    reads the id from there). `extra` are its plaintext metadata fields (`key`, `trace`):
    top-level, JSON, never encoded nor encrypted. Raises a TypeError naming the argument
    the serializer cannot carry, and PayloadTooLarge over `limit` bytes (the stored size)."""
    small = False  # plain JSON under the threshold: the classic envelope, as before
    try:
        e = "," + _dumps(extra)[1:-1] if extra else ""
        if codec.plain:
            a = _dumps(args) if args else "[]"
            k = _dumps(kwargs) if kwargs else "{}"
            plain = f'{{"id":"{task_id}","task":{_task_json(task)},"args":{a},"kwargs":{k}{e}}}'
            # A UTF-8 character is at most 4 bytes: under a quarter of the threshold in
            # characters, the arguments cannot be over it in bytes.
            small = not codec.may_compress(4 * (len(a) + len(k) + 3))
            arguments = b"" if small else f"[{a},{k}]".encode()
        else:
            arguments = serialize(codec.serializer, [list(args), kwargs])
    except (TypeError, ValueError, OverflowError) as exc:
        raise _name_bad_argument(task, args, kwargs, codec.serializer) from exc
    if codec.plain and small:
        return _checked_size(plain, task, limit)
    sealed = codec.seal(task_id, task, arguments)
    if sealed is None:  # plain JSON that was not over the threshold, or zstd could not shrink
        return _checked_size(plain, task, limit)
    kid = f',"kid":{_dumps(sealed.kid)}' if sealed.kid is not None else ""
    text = (
        f'{{"id":"{task_id}","task":{_task_json(task)},"args":null,'
        f'"fmt":"{sealed.fmt}"{kid},"body":"{sealed.body}"{e}}}'
    )
    return _checked_size(text, task, limit)


def _checked_size(text: str, task: str, limit: int) -> str:
    if len(text) > limit and len(text.encode()) > limit:
        raise PayloadTooLarge(task, len(text.encode()), limit)
    return text


@functools.lru_cache(maxsize=1024)
def _task_json(name: str) -> str:
    return _dumps(name)


def reencode(body: dict[str, Any]) -> str:
    """Payload of a message the worker changed (retry count, error). An encoded body is
    written back as it came: the arguments decoded from it are never stored, so an
    encrypted task's arguments stay encrypted in retries and in the DLQ."""
    if "fmt" in body:
        body = {k: v for k, v in body.items() if k != "kwargs"}
        body["args"] = None
    return _dumps(body)


def _name_bad_argument(
    task: str, args: tuple | list, kwargs: dict[str, Any], serializer: str = "json"
) -> TypeError:
    able = f"{serializer.upper() if serializer == 'json' else 'MessagePack'}-able"
    for i, value in enumerate(args):
        problem = argument_problem(serializer, value)
        if problem:
            return TypeError(f"task {task!r}: positional argument {i} is not {able}: {problem}")
    for name, value in kwargs.items():
        if not isinstance(name, str):
            return TypeError(f"task {task!r}: keyword name {name!r} is not a string")
        problem = argument_problem(serializer, value)
        if problem:
            return TypeError(f"task {task!r}: keyword argument {name!r} is not {able}: {problem}")
    return TypeError(f"task {task!r}: arguments are not {able}")


def _json_problem(value: Any) -> str | None:
    return argument_problem("json", value)


def _non_finite(token: str) -> Any:
    raise ValueError(f"non-finite number {token}")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class _Overflow(Exception):
    """A float literal that parsed to inf (1e999): the careful path takes over."""


def _finite_float(text: str) -> float:
    value = float(text)
    if value - value != 0.0:  # inf (NaN literals go to parse_constant)
        raise _Overflow
    return value


# Built once: `json.loads` with a hook builds a new decoder per call (the worker decodes
# every task it claims on its loop thread, so that showed in its profile).
_decode = json.JSONDecoder(parse_constant=_non_finite, parse_float=_finite_float).decode
SHALLOW = 64  # fewer '[' and '{' than this cannot nest deep enough to fail re-encoding


def _loads(raw: str | bytes) -> tuple[Any, bool]:
    """(decoded value, whether the re-encode check is still needed). A body with no
    overflowed float and fewer than SHALLOW brackets always re-encodes: json.loads
    refused NaN and Infinity already, so the check is skipped for it."""
    text = raw if isinstance(raw, str) else raw.decode(json.detect_encoding(raw), "surrogatepass")
    if text.startswith("\ufeff"):
        raise ValueError("Unexpected UTF-8 BOM (decode using utf-8-sig)")
    try:
        value = _decode(text)
    except _Overflow:
        return json.loads(text, parse_constant=_non_finite), True
    return value, text.count("[") + text.count("{") >= SHALLOW


def decode_payload(raw: str | bytes, codec: Codec = PLAIN) -> dict[str, Any]:
    """Decode a payload read from the broker; BadPayload names the field that keeps it
    from running (UnreadableBody when the envelope is sound but its body cannot be opened
    with `codec`'s keys and this worker's packages). What passes here can be run, retried
    and re-encoded: NaN and Infinity (which `json.loads` accepts but JSON does not) are
    refused up front. An encoded body comes back decoded into `args` and `kwargs`."""
    try:
        body, check = _loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadPayload(f"undecodable payload: {_where_not_finite(raw) or exc}") from None
    if not isinstance(body, dict):
        raise BadPayload(f"payload is a JSON {type(body).__name__}, not an object")
    task = body.get("task")
    if not isinstance(task, str) or not task:
        raise BadPayload("payload field 'task' is not a task name")
    encoded = "fmt" in body
    if encoded and (body.get("args") is not None or "kwargs" in body):
        raise BadPayload("payload has both an encoded body ('fmt') and plain arguments")
    if not encoded and not isinstance(body.get("args", []), list):
        raise BadPayload("payload field 'args' is not a list")
    if not isinstance(body.get("kwargs", {}), dict):
        raise BadPayload("payload field 'kwargs' is not an object")
    if not _is_count(body.get("attempt", 0)):
        raise BadPayload("payload field 'attempt' is not a non-negative integer")
    try:
        # A float that overflowed to inf (1e999) cannot be written back. An encoded body
        # is checked as base64 text when it is opened, so its (long) string is skipped.
        text = isinstance(body.get("body"), str)
        if check:
            _dumps({k: v for k, v in body.items() if k != "body"} if encoded and text else body)
    except (ValueError, TypeError, RecursionError) as exc:
        bad = [name for name, value in body.items() if _json_problem(value) is not None]
        field = f" field {bad[0]!r}" if bad else ""
        raise BadPayload(f"payload{field} cannot be re-encoded: {exc}") from None
    try:
        codec.admit(body)
        if encoded:
            body["args"], body["kwargs"] = codec.open(body)
    except UnreadableBody as exc:
        exc.envelope = body  # buried as it came, so a replay can run it later
        raise
    return body


def _where_not_finite(raw: str | bytes) -> str | None:
    """'payload field X holds a non-finite number' when that is why decoding failed."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if isinstance(body, dict):
        for name, value in body.items():
            if _json_problem(value) is not None:
                return f"payload field {name!r} holds a non-finite number (NaN or Infinity)"
    return "payload holds a non-finite number (NaN or Infinity)"


def replayed_payload(payload: str) -> str:
    """The payload of a task replayed from the DLQ (either broker): its retries start
    afresh and `replayed` counts the replays; its last error stays for the record."""
    try:
        body = json.loads(payload)
    except ValueError:
        return payload  # still undecodable: the worker will bury it again, with the reason
    if isinstance(body, dict):
        body["attempt"] = 0
        body["replayed"] = int(body.get("replayed", 0)) + 1
        return json.dumps(body, separators=(",", ":"))
    return payload
