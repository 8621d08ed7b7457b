"""Payload and entry encoding: the classic JSON envelope, clear errors for what cannot be sent
(encoded bodies: test_codec.py)."""

from __future__ import annotations

import json
import re

import pytest
from ebbtide.errors import BadPayload, PayloadTooLarge
from ebbtide.message import (
    check_priority,
    check_queue,
    decode_payload,
    encode_payload,
    parse_entry,
    replayed_payload,
)
from hypothesis import given
from hypothesis import strategies as st

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@given(st.lists(json_values, max_size=4), st.dictionaries(st.text(), json_values, max_size=3))
def test_payload_round_trips(args, kwargs):
    body = decode_payload(encode_payload("id1", "t", args, kwargs, 1 << 20))
    assert body["args"] == json.loads(json.dumps(args)) and body["kwargs"] == kwargs


def test_non_json_arguments_are_named():
    with pytest.raises(TypeError, match="positional argument 1 is not JSON-able: bytes"):
        encode_payload("i", "t", (1, b"raw"), {}, 1000)
    with pytest.raises(TypeError, match="keyword argument 'x' is not JSON-able: float"):
        encode_payload("i", "t", (), {"x": float("nan")}, 1000)


def test_payload_limit():
    with pytest.raises(PayloadTooLarge, match="payload of task 't' is .* over the limit of 100"):
        encode_payload("i", "t", ("é" * 60,), {}, 100)


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("{oops", "undecodable payload"),
        ("[1, 2]", "not an object"),
        ('{"args": []}', "field 'task' is not a task name"),
        ('{"task": "t", "args": [NaN]}', "field 'args' holds a non-finite number"),
        ('{"task": "t", "kwargs": {"x": 1e999}}', "field 'kwargs' cannot be re-encoded"),
        ('{"task": "t", "attempt": "three"}', "field 'attempt' is not a non-negative integer"),
        ('{"task": "t", "attempt": -1}', "field 'attempt' is not a non-negative integer"),
        ('{"task": "t", "args": {}}', "'args' is not a list"),
        ('{"task": "t", "kwargs": []}', "'kwargs' is not an object"),
        (b"\xff\xfe", "undecodable payload"),
    ],
)
def test_bad_payloads_say_why(raw, reason):
    with pytest.raises(BadPayload, match=reason):
        decode_payload(raw)


def test_entries():
    e = parse_entry("1700000000123|7|abc|def")
    assert (e.ready_ms, e.priority, e.task_id) == (1700000000123, 7, "abc|def")
    assert parse_entry("garbage") is None
    assert parse_entry("x|1|id") is None


def test_priority_bounds():
    assert check_priority(9) == 9
    with pytest.raises(ValueError, match="0..9"):
        check_priority(10)
    with pytest.raises(TypeError):
        check_priority(True)


def test_one_queue_name_rule():
    assert check_queue("a.b-c_1") == "a.b-c_1" and check_queue("x" * 200)
    for bad in ("", "x" * 201, "a b", "a:b", 5):
        with pytest.raises(ValueError, match="bad queue name"):
            check_queue(bad)  # type: ignore[arg-type]


def test_a_replayed_payload_starts_its_retries_afresh_and_counts_replays():
    once = replayed_payload('{"id":"i","attempt":4,"error":"e"}')
    assert json.loads(once) == {"id": "i", "attempt": 0, "error": "e", "replayed": 1}
    assert json.loads(replayed_payload(once))["replayed"] == 2
    assert replayed_payload("{oops") == "{oops" and replayed_payload("[1]") == "[1]"


@pytest.mark.parametrize(
    "name", ["x.dead", "x.lost", "x.delay.5", "x.wait.5", "worker.w", "rate.r"]
)
def test_a_queue_name_of_ebbtides_own_queues_is_refused_naming_it(name):
    from ebbtide.message import check_queue, is_queue_name

    with pytest.raises(ValueError, match=rf"queue name '{re.escape(name)}' is reserved"):
        check_queue(name)
    assert not is_queue_name(name)


def test_decode_skips_the_re_encode_check_only_where_it_cannot_fail():
    """The fast path (no overflowed float, shallow) decodes as json.loads does; an
    overflow deep inside, or a body nested past the recursion limit, is still refused."""
    raw = '{"task": "t", "args": [1.5, -2e3, "\\ud800"], "kwargs": {"a": [[{}]]}}'
    assert decode_payload(raw) == json.loads(raw)
    assert decode_payload(raw.encode("utf-8-sig")) == json.loads(raw)  # bytes with a BOM
    with pytest.raises(BadPayload, match="undecodable payload"):
        decode_payload("\ufeff" + raw)  # a BOM in text, as json.loads refuses it
    with pytest.raises(BadPayload, match="field 'args' cannot be re-encoded"):
        decode_payload('{"task": "t", "args": [[[1e400]]]}')
    deep = '{"task": "t", "args": ' + "[" * 5000 + "]" * 5000 + "}"
    with pytest.raises(BadPayload):
        decode_payload(deep)
    nested = '{"task": "t", "args": ' + "[" * 80 + "]" * 80 + "}"  # past SHALLOW: checked
    assert decode_payload(nested)["args"] == json.loads(nested)["args"]
