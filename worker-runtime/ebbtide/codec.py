"""The encoded body of a task: its arguments serialized (JSON or MessagePack), compressed
(zstd, above a size threshold) and encrypted (AES-GCM), in that order.

The payload itself stays a one-line JSON envelope (message.py): the brokers' scripts read
its id, the worker rewrites its attempt and error fields, and none of that needs the
arguments. Only `args` and `kwargs` move into the envelope's `body`, with `fmt` naming the
layers ("msgpack+zstd+aesgcm") and `kid` the key, so any worker can read any message and
one that cannot says exactly why.

Pure functions and values only (no I/O): unit-tested directly. The optional packages
(msgpack, cryptography) are imported on first use, so a worker without an extra still
reads every other format and buries only what it cannot read, naming the extra.
"""

from __future__ import annotations

import base64
import binascii
import functools
import importlib
import json
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import BadPayload, EbbtideError

SERIALIZERS = ("json", "msgpack")
ZSTD, AESGCM = "zstd", "aesgcm"
DEFAULT_COMPRESS_THRESHOLD = 16 * 1024  # bytes of serialized arguments
MAX_DECODED_BYTES = 64 << 20  # a body never inflates past this (a zstd bomb is refused)
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # AES-GCM's standard nonce, random per message
_KEY_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_INSTALL = {
    "msgpack": "pip install 'ebbtide[msgpack]'",
    "cryptography": "pip install 'ebbtide[encryption]'",
    "zstandard": "pip install zstandard",  # a dependency of ebbtide: only a broken install lacks it
}

_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode


class CodecUnavailable(EbbtideError, ImportError):
    """An optional package a format needs is not installed."""


def _optional(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise CodecUnavailable(
            f"the {module} package is not installed ({_INSTALL[module]})"
        ) from None


class UnreadableBody(BadPayload):
    """The envelope is a task, but its body cannot be opened here (unknown format, a
    missing extra, an unknown key, a failed tag, corrupt bytes). The envelope itself is
    buried, so a replay once the worker can read it runs the task."""

    envelope: dict[str, Any] | None = None  # set by message.decode_payload


# -- formats ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Format:
    """The layers of one body, as `fmt` spells them: '<serializer>[+zstd][+aesgcm]'."""

    serializer: str
    compressed: bool = False
    encrypted: bool = False

    def __str__(self) -> str:
        layers = [self.serializer]
        layers += [ZSTD] if self.compressed else []
        layers += [AESGCM] if self.encrypted else []
        return "+".join(layers)


def parse_format(fmt: object) -> Format:
    """The one parser of `fmt`; UnreadableBody names an unknown format or layer."""
    if not isinstance(fmt, str):
        raise UnreadableBody(f"payload field 'fmt' is not a format name: {fmt!r}")
    head, *rest = fmt.split("+")
    known = f"this worker reads {' or '.join(SERIALIZERS)}, then optionally +{ZSTD}, +{AESGCM}"
    if head not in SERIALIZERS or rest not in ([], [ZSTD], [AESGCM], [ZSTD, AESGCM]):
        raise UnreadableBody(f"unknown payload format {fmt!r} ({known})")
    return Format(head, ZSTD in rest, AESGCM in rest)


# -- serializers -----------------------------------------------------------------------


def _non_finite(token: str) -> Any:
    raise ValueError(f"non-finite number {token}")


def serialize(serializer: str, value: Any) -> bytes:
    """Raises TypeError/ValueError for what the serializer cannot carry."""
    if serializer == "json":
        return _dumps(value).encode()
    packed = _optional("msgpack").packb(value, use_bin_type=True)
    assert isinstance(packed, bytes)
    return packed


def deserialize(serializer: str, data: bytes) -> Any:
    if serializer == "json":
        return json.loads(data, parse_constant=_non_finite)
    msgpack = _optional("msgpack")
    return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_no_ext)


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"MessagePack extension type {code} is not supported")


def argument_problem(serializer: str, value: Any) -> str | None:
    """Why `value` cannot be serialized, or None."""
    try:
        serialize(serializer, value)
    except (TypeError, ValueError, OverflowError) as exc:
        return f"{type(value).__name__} ({exc})"
    return None


# -- keys ------------------------------------------------------------------------------


def parse_key(key_id: object, key: bytes | str) -> bytes:
    """A 32-byte AES key from raw bytes or base64 text (standard or URL-safe), as a
    Secret holds it; ValueError names the key id."""
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise ValueError(f"encryption key id {key_id!r}: use 1-64 letters, digits, '_', '.', '-'")
    if isinstance(key, str):
        text = key.strip()
        try:
            raw = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"encryption key {key_id!r} is not valid base64") from None
    elif isinstance(key, bytes | bytearray):
        raw = bytes(key)
    else:
        raise TypeError(f"encryption key {key_id!r} must be bytes or base64 text")
    if len(raw) != KEY_BYTES:
        raise ValueError(
            f"encryption key {key_id!r} is {len(raw)} bytes, not {KEY_BYTES} (AES-256): "
            "make one with: python -c 'import os,base64; print(base64.b64encode(os.urandom(32)).decode())'"
        )
    return raw


def keys_from_dir(path: str | os.PathLike[str]) -> dict[str, str]:
    """Keys from a mounted Secret: each file is one key, its name the key id, its content
    the base64 key (Kubernetes' `..data` links and dotfiles are skipped)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"encryption keys folder {str(folder)!r} does not exist")
    return {
        f.name: f.read_text().strip()
        for f in sorted(folder.iterdir())
        if not f.name.startswith(".") and f.is_file()
    }


# -- the codec -------------------------------------------------------------------------


@dataclass(frozen=True)
class Sealed:
    """An encoded body, ready for the envelope."""

    fmt: str
    body: str  # base64 text: the envelope stays JSON, one line
    kid: str | None = None


@dataclass(frozen=True)
class Codec:
    """How an App writes bodies (`serializer`, `compress_threshold`, `encrypt_with`) and
    which keys it reads them with. Reading never depends on the writing settings."""

    serializer: str = "json"
    compress_threshold: int | None = DEFAULT_COMPRESS_THRESHOLD
    keys: Mapping[str, bytes] = field(default_factory=dict, repr=False)  # never in a log
    encrypt_with: str | None = None
    encryption_required: bool = False  # a reader that refuses what is not encrypted

    @classmethod
    def build(
        cls,
        serializer: str = "json",
        compress_threshold: int | None = DEFAULT_COMPRESS_THRESHOLD,
        encryption_keys: Mapping[str, bytes | str] | None = None,
        encrypt_with: str | None = None,
        encryption_required: bool = False,
    ) -> Codec:
        """Checked settings: ValueError names the setting, CodecUnavailable the extra."""
        if serializer not in SERIALIZERS:
            raise ValueError(f"serializer must be one of {SERIALIZERS}, got {serializer!r}")
        if serializer == "msgpack":
            _optional("msgpack")
        if compress_threshold is not None and (
            not isinstance(compress_threshold, int)
            or isinstance(compress_threshold, bool)
            or compress_threshold < 0
        ):
            raise ValueError(
                f"compress_threshold must be bytes >= 0 or None, got {compress_threshold!r}"
            )
        if compress_threshold is not None:
            _optional("zstandard")
        keys = {k: parse_key(k, v) for k, v in (encryption_keys or {}).items()}
        if keys:
            _optional("cryptography")
        if encrypt_with is None and len(keys) == 1:
            encrypt_with = next(iter(keys))
        if encrypt_with is None and keys:
            raise ValueError(
                f"encrypt_with must name one of the encryption keys {sorted(keys)} "
                "(the others are only read: rotation)"
            )
        if encrypt_with is not None and encrypt_with not in keys:
            raise ValueError(
                f"encrypt_with={encrypt_with!r} is not one of the encryption keys {sorted(keys)}"
            )
        if encryption_required and not keys:
            raise ValueError("encryption_required=True needs encryption_keys to read with")
        return cls(serializer, compress_threshold, keys, encrypt_with, encryption_required)

    def admit(self, envelope: Mapping[str, Any]) -> None:
        """With `encryption_required`, an envelope that is not encrypted is refused before
        anything of it runs: whoever can write to the broker but holds no key cannot
        forge a task this worker runs."""
        fmt = envelope.get("fmt")
        if self.encryption_required and not (isinstance(fmt, str) and fmt.endswith("+aesgcm")):
            shown = f"format {fmt!r}" if isinstance(fmt, str) else "plain JSON arguments"
            raise UnreadableBody(
                f"payload is not encrypted ({shown}), and this worker runs only encrypted "
                "tasks (App(encryption_required=True))"
            )

    @property
    def plain(self) -> bool:
        """Small bodies are written as the classic args/kwargs JSON (readable by every
        Ebbtide version): true for a JSON codec without encryption."""
        return self.serializer == "json" and self.encrypt_with is None

    def may_compress(self, size: int) -> bool:
        return self.compress_threshold is not None and size > self.compress_threshold

    def seal(self, task_id: str, task: str, data: bytes) -> Sealed | None:
        """The body for serialized arguments, or None when they go in plain (a plain
        codec under its threshold)."""
        compressed = False
        if self.may_compress(len(data)):
            squeezed = _zstd().compressor.compress(data)
            if len(squeezed) < len(data):
                data, compressed = squeezed, True
        if self.plain and not compressed:
            return None
        fmt = Format(self.serializer, compressed, self.encrypt_with is not None)
        kid = self.encrypt_with
        if kid is not None:
            nonce = os.urandom(NONCE_BYTES)
            aead = _aead(self.keys[kid])
            data = nonce + aead.encrypt(nonce, data, associated_data(task_id, task, str(fmt), kid))
        return Sealed(str(fmt), base64.b64encode(data).decode("ascii"), kid)

    def open(self, envelope: Mapping[str, Any]) -> tuple[list, dict[str, Any]]:
        """(args, kwargs) of an envelope with a body; UnreadableBody says why not."""
        fmt = parse_format(envelope.get("fmt"))
        text, kid = envelope.get("body"), envelope.get("kid")
        if not isinstance(text, str):
            raise UnreadableBody("payload field 'body' is not base64 text")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise UnreadableBody("payload field 'body' is not valid base64") from None
        try:
            if fmt.encrypted:
                data = self._decrypt(envelope, str(fmt), kid, data)
            elif kid is not None:
                raise UnreadableBody(
                    f"payload format {str(fmt)!r} is not encrypted, yet names key {kid!r}"
                )
            if fmt.compressed:
                data = _inflate(data)
            value = deserialize(fmt.serializer, data)
        except UnreadableBody:
            raise
        except CodecUnavailable as exc:
            raise UnreadableBody(
                f"payload format {str(fmt)!r} cannot be read here: {exc}"
            ) from None
        except _ZstdFailed as exc:
            raise UnreadableBody(f"payload format {str(fmt)!r}: corrupt zstd body: {exc}") from None
        except Exception as exc:  # json's and msgpack's own errors (ExtraData, FormatError)
            raise UnreadableBody(
                f"payload format {str(fmt)!r}: corrupt {fmt.serializer} body: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not isinstance(value[0], list)
            or not isinstance(value[1], dict)
            or not all(isinstance(k, str) for k in value[1])
        ):
            raise UnreadableBody(
                f"payload format {str(fmt)!r}: body is not [args list, kwargs object with string keys]"
            )
        return value[0], value[1]

    def _decrypt(self, envelope: Mapping[str, Any], fmt: str, kid: object, data: bytes) -> bytes:
        if not isinstance(kid, str):
            raise UnreadableBody(f"payload format {fmt!r} is encrypted but names no key ('kid')")
        key = self.keys.get(kid)
        if key is None:
            known = f"it knows {sorted(self.keys)}" if self.keys else "it has no encryption keys"
            raise UnreadableBody(
                f"payload encrypted with key {kid!r}, which this worker lacks ({known})"
            )
        _optional("cryptography")
        from cryptography.exceptions import InvalidTag

        if len(data) <= NONCE_BYTES:
            raise UnreadableBody(f"payload encrypted with key {kid!r} is too short to hold a nonce")
        aad = associated_data(str(envelope.get("id")), str(envelope.get("task")), fmt, kid)
        try:
            return _aead(key).decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], aad)
        except InvalidTag:
            raise UnreadableBody(
                f"payload encrypted with key {kid!r} fails its authentication tag: the wrong "
                "key under that id, or a body altered or moved from another task"
            ) from None


PLAIN = Codec()


def associated_data(task_id: str, task: str, fmt: str, kid: str) -> bytes:
    """What the tag binds beside the body: a ciphertext cannot be moved to another task,
    nor its format or key id changed."""
    return _dumps(["ebbtide/1", task_id, task, fmt, kid]).encode()


@functools.lru_cache(maxsize=64)
def _aead(key: bytes) -> Any:
    """One AESGCM per key (it holds no per-message state, so threads may share it)."""
    _optional("cryptography")
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM as Aead

    return Aead(key)


class _ZstdContexts(threading.local):
    """A zstd (de)compressor per thread: building one costs more than compressing a small
    body, and one context must not be used by two threads at once."""

    def __init__(self) -> None:
        zstandard = _optional("zstandard")
        self.compressor = zstandard.ZstdCompressor()
        self.decompressor = zstandard.ZstdDecompressor()


_contexts: _ZstdContexts | None = None


def _zstd() -> _ZstdContexts:
    global _contexts
    if _contexts is None:
        _contexts = _ZstdContexts()
    return _contexts


class _ZstdFailed(ValueError):
    pass


def _inflate(data: bytes) -> bytes:
    zstandard = _optional("zstandard")
    try:
        size = zstandard.frame_content_size(data)
        if size > MAX_DECODED_BYTES:
            raise _ZstdFailed(f"it inflates to {size} bytes, over {MAX_DECODED_BYTES}")
        return _zstd().decompressor.decompress(data, max_output_size=MAX_DECODED_BYTES)
    except zstandard.ZstdError as exc:
        raise _ZstdFailed(str(exc)) from None
