"""The payload envelope's encoded bodies (codec.py, through message.py): every
serializer/compression/encryption combination round-trips, what is stored never holds
decoded arguments of an encoded body, and every corruption is a clear UnreadableBody."""

from __future__ import annotations

import base64
import json
import os
import sys

import ebbtide
import pytest
from ebbtide.brokers.base import Delivery
from ebbtide.codec import (
    Codec,
    CodecUnavailable,
    Format,
    UnreadableBody,
    keys_from_dir,
    parse_format,
    parse_key,
)
from ebbtide.errors import BadPayload, PayloadTooLarge
from ebbtide.message import decode_payload, encode_payload, reencode, replayed_payload
from ebbtide.validation import content_problem, content_size
from ebbtide.worker import outcomes
from hypothesis import given, settings
from hypothesis import strategies as st

KEY_A = base64.b64encode(bytes(range(32))).decode()
KEY_B = bytes(range(1, 33))
KEYS = {"a": KEY_A, "b": KEY_B}
MB = 1 << 20


def codecs() -> list[Codec]:
    """Every combination: json/msgpack x zstd always/never x plaintext/AES-GCM."""
    out = []
    for serializer in ("json", "msgpack"):
        for threshold in (0, None):
            for kid in (None, "a"):
                keys = KEYS if kid else None
                out.append(Codec.build(serializer, threshold, keys, kid))
    return out


ALL = codecs()
READER = Codec.build(encryption_keys=KEYS, encrypt_with="a")  # reads every format


def fmt_of(payload: str) -> str | None:
    return json.loads(payload).get("fmt")


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(range(len(ALL))),
    st.lists(values, max_size=4),
    st.dictionaries(st.text(), values, max_size=3),
    st.booleans(),
)
def test_every_codec_round_trips(i, args, kwargs, padded):
    if padded:  # big enough for zstd to shrink it (tiny bodies stay uncompressed)
        args = [*args, "pad " * 5000]
    payload = encode_payload("id1", "t", args, kwargs, MB, codec=ALL[i])
    codec = ALL[i]
    if padded and codec.compress_threshold is not None:
        assert "zstd" in (fmt_of(payload) or "")
    body = decode_payload(payload, READER)
    assert body["args"] == json.loads(json.dumps(args)) and body["kwargs"] == kwargs
    assert "\n" not in payload and payload.startswith(
        '{"id":"id1",'
    )  # the enqueue script's framing


@pytest.mark.parametrize(
    "codec, small, big",
    [
        (Codec(), None, "json+zstd"),
        (Codec.build("msgpack"), "msgpack", "msgpack+zstd"),
        (Codec.build(encryption_keys={"a": KEY_A}), "json+aesgcm", "json+zstd+aesgcm"),
        (Codec.build("msgpack", None), "msgpack", "msgpack"),
    ],
)
def test_the_format_is_marked_and_zstd_starts_over_the_threshold(codec, small, big):
    # The serialized [args, kwargs] of [at] is exactly 16 KiB, so not over the threshold:
    # json '[["x..."],{}]' adds 9 bytes, msgpack 6 (array, array, str16 header, map).
    at = "x" * (16 * 1024 - (9 if codec.serializer == "json" else 6))
    assert fmt_of(encode_payload("i", "t", ["x"], {}, MB, codec=codec)) == small
    assert fmt_of(encode_payload("i", "t", [at], {}, MB, codec=codec)) in (small, "json")
    big_payload = encode_payload("i", "t", [at + "x"], {}, MB, codec=codec)
    assert fmt_of(big_payload) == big
    assert decode_payload(big_payload, READER)["args"] == [at + "x"]


def test_small_json_stays_the_classic_envelope_old_workers_read():
    payload = encode_payload("i", "t", [1], {"k": 2}, MB, key="u")
    assert payload == '{"id":"i","task":"t","args":[1],"kwargs":{"k":2},"key":"u"}'


def test_incompressible_arguments_are_not_compressed():
    noise = base64.b64encode(os.urandom(30_000)).decode()
    payload = encode_payload("i", "t", [noise], {}, MB, codec=Codec(compress_threshold=0))
    assert fmt_of(payload) == "json+zstd"  # base64 text still shrinks
    raw = Codec.build("msgpack", 0)
    assert fmt_of(encode_payload("i", "t", [os.urandom(30_000)], {}, MB, codec=raw)) == "msgpack"


def test_compression_lets_big_arguments_under_the_size_limit_and_the_limit_is_the_stored_size():
    big = "abc" * 100_000
    payload = encode_payload("i", "t", [big], {}, 20_000)
    assert len(payload) < 20_000
    with pytest.raises(PayloadTooLarge, match="over the limit of 100 bytes"):
        encode_payload("i", "t", [big], {}, 100)
    with pytest.raises(PayloadTooLarge):
        encode_payload("i", "t", ["x"], {}, 100, codec=Codec.build(encryption_keys={"a": KEY_A}))


def test_msgpack_carries_bytes_and_names_what_it_cannot():
    codec = Codec.build("msgpack")
    body = decode_payload(encode_payload("i", "t", [b"\x00\xff"], {"n": -1}, MB, codec=codec))
    assert body["args"] == [b"\x00\xff"] and body["kwargs"] == {"n": -1}
    with pytest.raises(TypeError, match="positional argument 1 is not MessagePack-able: set"):
        encode_payload("i", "t", [1, {2}], {}, MB, codec=codec)
    with pytest.raises(TypeError, match="keyword argument 'x' is not MessagePack-able"):
        encode_payload("i", "t", [], {"x": object()}, MB, codec=codec)
    with pytest.raises(TypeError, match="positional argument 0 is not JSON-able: bytes"):
        encode_payload("i", "t", [b"x"], {}, MB, codec=Codec(compress_threshold=0))


def test_what_is_written_back_never_holds_decoded_arguments():
    sealed = Codec.build(encryption_keys={"a": KEY_A})
    payload = encode_payload("i", "t", ["secret"], {"pin": "1234"}, MB, codec=sealed, key="u")
    body = decode_payload(payload, sealed)
    assert body["args"] == ["secret"]
    again = reencode({**body, "attempt": 1, "error": "E"})
    assert "secret" not in again and "1234" not in again
    assert decode_payload(again, sealed)["kwargs"] == {"pin": "1234"}
    replayed = replayed_payload(again)
    assert decode_payload(replayed, sealed)["args"] == ["secret"]
    assert json.loads(replayed)["attempt"] == 0


def test_metadata_fields_stay_plaintext_through_encryption_and_retries():
    sealed = Codec.build("msgpack", 0, {"a": KEY_A})
    trace = {"traceparent": "00-abc-def-01"}
    payload = encode_payload("i", "t", ["s"], {}, MB, codec=sealed, trace=trace, key="u")
    assert json.loads(payload)["trace"] == trace and json.loads(payload)["key"] == "u"
    body = decode_payload(payload, sealed)
    assert json.loads(reencode({**body, "attempt": 1}))["trace"] == trace


def test_rotation_a_worker_reads_every_key_it_holds():
    old = Codec.build(encryption_keys={"a": KEY_A})
    new = Codec.build(encryption_keys={"b": KEY_B})
    worker = Codec.build(encryption_keys=KEYS, encrypt_with="b")
    for producer in (old, new):
        payload = encode_payload("i", "t", [producer.encrypt_with], {}, MB, codec=producer)
        assert decode_payload(payload, worker)["args"] == [producer.encrypt_with]
    assert json.loads(encode_payload("i", "t", [], {}, MB, codec=worker))["kid"] == "b"


def envelope(payload: str, **changes) -> str:
    body = json.loads(payload)
    body.update(changes)
    return json.dumps(body)


SEALED = Codec.build("msgpack", 0, {"a": KEY_A})
GOOD = encode_payload("id9", "task.x", ["s"], {}, MB, codec=SEALED)


def flipped(text: str) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[-1] ^= 1
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize(
    "payload, reader, reason",
    [
        (envelope(GOOD, fmt="cbor"), READER, "unknown payload format 'cbor'"),
        (envelope(GOOD, fmt="json+aesgcm+zstd"), READER, "unknown payload format"),
        (envelope(GOOD, fmt=7), READER, "'fmt' is not a format name"),
        (GOOD, Codec(), "key 'a', which this worker lacks .it has no encryption keys"),
        (GOOD, Codec.build(encryption_keys={"b": KEY_B}), r"lacks \(it knows \['b'\]\)"),
        (GOOD, Codec.build(encryption_keys={"a": KEY_B}), "fails its authentication tag"),
        (envelope(GOOD, id="id10"), READER, "moved from another task"),
        (envelope(GOOD, task="task.y"), READER, "fails its authentication tag"),
        (envelope(GOOD, kid="b"), READER, "fails its authentication tag"),
        (envelope(GOOD, fmt="msgpack+zstd+aesgcm"), READER, "fails its authentication tag"),
        (envelope(GOOD, body=flipped(json.loads(GOOD)["body"])), READER, "authentication tag"),
        (envelope(GOOD, kid=None), READER, "encrypted but names no key"),
        (envelope(GOOD, body="AAAA"), READER, "too short to hold a nonce"),
        (envelope(GOOD, body="not base64!"), READER, "'body' is not valid base64"),
        (envelope(GOOD, body=3), READER, "'body' is not base64 text"),
        (envelope(GOOD, fmt="msgpack+zstd"), READER, "is not encrypted, yet names key 'a'"),
        (
            '{"id":"i","task":"t","args":null,"fmt":"json+zstd","body":"AAAA"}',
            READER,
            "corrupt zstd",
        ),
        (
            '{"id":"i","task":"t","args":null,"fmt":"json","body":"e30="}',
            READER,
            "not \\[args list",
        ),
        ('{"id":"i","task":"t","args":null,"fmt":"json","body":"W1tdLHt9XQo="}', READER, None),
        (
            '{"id":"i","task":"t","args":null,"fmt":"json","body":"W05hTl0="}',
            READER,
            "corrupt json",
        ),
        (
            '{"id":"i","task":"t","args":null,"fmt":"msgpack","body":"wQ=="}',
            READER,
            "corrupt msgpack",
        ),
        (
            '{"id":"i","task":"t","args":null,"fmt":"msgpack","body":"kpCAAQ=="}',
            READER,
            "ExtraData",
        ),
        (
            '{"id":"i","task":"t","args":null,"fmt":"msgpack","body":"kscBAQA="}',
            READER,
            "extension",
        ),
    ],
)
def test_a_body_that_cannot_be_opened_says_why(payload, reader, reason):
    if reason is None:  # the control: a hand-made body that is fine
        assert decode_payload(payload, reader)["args"] == []
        return
    with pytest.raises(UnreadableBody, match=reason) as caught:
        decode_payload(payload, reader)
    assert caught.value.envelope is not None and caught.value.envelope["task"]


def test_a_zstd_bomb_is_refused(monkeypatch):
    import zstandard
    from ebbtide import codec

    monkeypatch.setattr(codec, "MAX_DECODED_BYTES", 1000)
    data = zstandard.ZstdCompressor().compress(b"[[" + b"0," * 5000 + b"0],{}]")
    body = base64.b64encode(data).decode()
    with pytest.raises(UnreadableBody, match=r"inflates to \d+ bytes, over 1000"):
        decode_payload(f'{{"id":"i","task":"t","args":null,"fmt":"json+zstd","body":"{body}"}}')
    streamed = zstandard.ZstdCompressor(write_content_size=False).compress(b"[[" + b"0," * 5000)
    body = base64.b64encode(streamed).decode()
    with pytest.raises(UnreadableBody, match="corrupt zstd body"):
        decode_payload(f'{{"id":"i","task":"t","args":null,"fmt":"json+zstd","body":"{body}"}}')


def test_an_envelope_with_both_a_body_and_plain_arguments_is_refused():
    with pytest.raises(BadPayload, match="both an encoded body"):
        decode_payload('{"id":"i","task":"t","args":[1],"fmt":"json","body":""}')


def test_a_missing_extra_is_named_when_reading_and_when_configuring(monkeypatch):
    payload = encode_payload("i", "t", [1], {}, MB, codec=Codec.build("msgpack"))
    monkeypatch.setitem(sys.modules, "msgpack", None)  # as if not installed
    with pytest.raises(
        UnreadableBody, match=r"'msgpack' cannot be read here: .*ebbtide\[msgpack\]"
    ):
        decode_payload(payload)
    with pytest.raises(CodecUnavailable, match=r"ebbtide\[msgpack\]"):
        Codec.build("msgpack")
    monkeypatch.setitem(sys.modules, "cryptography", None)
    with pytest.raises(CodecUnavailable, match=r"ebbtide\[encryption\]"):
        Codec.build(encryption_keys={"a": KEY_A})


def test_the_unreadable_task_is_buried_as_it_came():
    d = Delivery("q", "entry", GOOD)
    with pytest.raises(UnreadableBody) as caught:
        decode_payload(GOOD, Codec())
    settlement = outcomes.unreadable(d, caught.value.envelope or {}, str(caught.value), 5.0)
    buried = json.loads(settlement.payload or "")
    assert buried["body"] == json.loads(GOOD)["body"] and buried["fmt"] == "msgpack+aesgcm"
    assert "lacks" in buried["error"] and buried["died_at"] == 5.0 and buried["args"] is None
    assert decode_payload(replayed_payload(settlement.payload or ""), READER)["args"] == ["s"]


def test_formats_parse_strictly():
    assert parse_format("msgpack+zstd+aesgcm") == Format("msgpack", True, True)
    assert str(Format("json", False, True)) == "json+aesgcm"
    for bad in ("", "json+", "zstd", "json+zstd+zstd", "JSON"):
        with pytest.raises(UnreadableBody, match="unknown payload format"):
            parse_format(bad)


def test_keys_are_checked_and_named(tmp_path):
    assert parse_key("a", KEY_A) == bytes(range(32))
    urlsafe = base64.urlsafe_b64encode(bytes(range(200, 232))).decode()
    assert parse_key("a", urlsafe) == bytes(range(200, 232))
    with pytest.raises(ValueError, match="key 'k1' is 16 bytes, not 32"):
        parse_key("k1", os.urandom(16))
    with pytest.raises(ValueError, match="key 'k1' is not valid base64"):
        parse_key("k1", "not*base64")
    with pytest.raises(ValueError, match="key id 'a b'"):
        parse_key("a b", KEY_A)
    # A Secret volume's layout: each key a symlink into ..data, itself a link to a
    # timestamped folder that the kubelet swaps atomically on an update.
    stamped = tmp_path / "..2026_12_02_01_00_00.123"
    stamped.mkdir()
    (stamped / "2026-a").write_text(KEY_A + "\n")
    (tmp_path / "..data").symlink_to(stamped.name)
    (tmp_path / "2026-a").symlink_to("..data/2026-a")
    assert keys_from_dir(tmp_path) == {"2026-a": KEY_A}
    with pytest.raises(ValueError, match="does not exist"):
        keys_from_dir(tmp_path / "nope")


def test_codec_settings_are_checked():
    assert Codec.build(encryption_keys={"a": KEY_A}).encrypt_with == "a"  # the only key
    with pytest.raises(ValueError, match="encrypt_with must name one of"):
        Codec.build(encryption_keys=KEYS)
    with pytest.raises(ValueError, match="encrypt_with='c' is not one of"):
        Codec.build(encryption_keys=KEYS, encrypt_with="c")
    with pytest.raises(
        ValueError, match="encrypt_with='a' is not one of the encryption keys \\[\\]"
    ):
        Codec.build(encrypt_with="a")
    with pytest.raises(ValueError, match="serializer must be one of"):
        Codec.build("pickle")
    with pytest.raises(ValueError, match="compress_threshold must be"):
        Codec.build(compress_threshold=-1)


def test_the_app_reads_its_keys_from_a_mounted_secret_folder(tmp_path, monkeypatch):
    (tmp_path / "a").write_text(KEY_A)
    (tmp_path / "b").write_text(base64.b64encode(KEY_B).decode())
    monkeypatch.setenv("EBBTIDE_ENCRYPTION_KEYS_DIR", str(tmp_path))
    monkeypatch.setenv("EBBTIDE_ENCRYPT_WITH", "b")
    app = ebbtide.App("redis://127.0.0.1:1/0")  # never connects: the codec is built up front
    assert app.codec.encrypt_with == "b" and set(app.codec.keys) == {"a", "b"}
    assert ebbtide.App(encrypt_with="a").codec.encrypt_with == "a"
    monkeypatch.delenv("EBBTIDE_ENCRYPT_WITH")
    with pytest.raises(ValueError, match="encrypt_with must name one of the encryption keys"):
        ebbtide.App()
    with pytest.raises(ValueError, match="serializer must be one of"):
        ebbtide.App(serializer="yaml", encryption_keys={})


def test_keys_never_show_in_a_repr():
    codec = Codec.build(encryption_keys={"a": KEY_A})
    assert KEY_A not in repr(codec) and repr(bytes(range(32))) not in repr(codec)
    assert "encrypt_with='a'" in repr(codec)


def test_a_reader_that_requires_encryption_refuses_everything_else():
    strict = Codec.build(encryption_keys={"a": KEY_A}, encryption_required=True)
    sealed = encode_payload("i", "t", ["s"], {}, MB, codec=strict)
    assert decode_payload(sealed, strict)["args"] == ["s"]
    for codec in (Codec(), Codec.build("msgpack"), Codec(compress_threshold=0)):
        payload = encode_payload("i", "t", ["x" * 20_000], {}, MB, codec=codec)
        with pytest.raises(UnreadableBody, match="not encrypted .*runs only encrypted") as caught:
            decode_payload(payload, strict)
        assert caught.value.envelope is not None and caught.value.envelope["id"] == "i"
    with pytest.raises(ValueError, match="encryption_required=True needs encryption_keys"):
        Codec.build(encryption_required=True)


def test_the_worker_side_size_check_counts_an_encoded_body_as_stored():
    codec = Codec.build("msgpack", 0)
    payload = encode_payload("i", "t", [os.urandom(5000)], {}, MB, codec=codec)
    body = decode_payload(payload, codec)  # args hold bytes, which JSON cannot size
    assert content_size(body) == len(payload) and content_problem(body, len(payload)) is None
    assert "over the limit of 100 bytes" in (content_problem(body, 100) or "")


FORMATS = ["json", "msgpack", "json+zstd", "msgpack+zstd", "json+aesgcm", "msgpack+zstd+aesgcm"]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(FORMATS), st.binary(max_size=300), st.sampled_from([None, "a", "zz"]))
def test_any_body_bytes_either_decode_or_say_why(fmt, raw, kid):
    """Whatever bytes a body holds, under whatever format and key id, decoding returns
    arguments or raises BadPayload (UnreadableBody) with a reason: never anything else."""
    envelope = {"id": "i", "task": "t", "args": None, "fmt": fmt, "body": ""}
    envelope["body"] = base64.b64encode(raw).decode()
    if kid is not None:
        envelope["kid"] = kid
    try:
        body = decode_payload(json.dumps(envelope), READER)
    except BadPayload as exc:
        assert str(exc)
    else:
        assert isinstance(body["args"], list) and isinstance(body["kwargs"], dict)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(range(len(ALL))), st.integers(min_value=0), st.integers(1, 255))
def test_a_flipped_byte_in_a_real_body_is_refused_or_harmless(i, where, xor):
    payload = encode_payload("i", "t", ["some text " * 50], {"n": 1}, MB, codec=ALL[i])
    envelope = json.loads(payload)
    if "body" not in envelope:
        return  # the classic envelope: no body to corrupt
    raw = bytearray(base64.b64decode(envelope["body"]))
    raw[where % len(raw)] ^= xor
    envelope["body"] = base64.b64encode(bytes(raw)).decode()
    try:
        decode_payload(json.dumps(envelope), READER)
    except UnreadableBody as exc:
        assert str(exc)
        if ALL[i].encrypt_with:
            assert "authentication tag" in str(exc)
