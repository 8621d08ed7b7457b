"""Payload formats and encryption on real workers and both real brokers (`broker`):
MessagePack, zstd over the threshold, a queue holding every format at once, an unknown
format and an unknown key buried with the reason (never a crash, never a stall), and
encrypted tasks that run and stay sealed in the DLQ (docs/runtime.md, "Payload formats"
and "Encryption"). The codec's own rules: tests/unit/runtime/test_codec.py."""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import codec_tasks
import ebbtide
from codec_tasks import fingerprint
from worker_testkit import HERE, wait_for, worker

KEYS = {
    "2026-a": base64.b64encode(bytes(range(32))).decode(),
    "2026-b": base64.b64encode(bytes(range(100, 132))).decode(),
}
BIG = "a compressible line of text, " * 3600  # ~100 KiB, over the 16 KiB threshold


@contextlib.contextmanager
def producer(url: str, **settings: Any) -> Iterator[SimpleNamespace]:
    """An App of its own (its own format and keys) with handles to codec_tasks' tasks."""
    app = ebbtide.App(url, **settings)
    try:
        yield SimpleNamespace(
            echo=app.task(name="codec.echo")(codec_tasks.echo.fn),
            fails=app.task(name="codec.fails", max_retries=0)(codec_tasks.fails.fn),
        )
    finally:
        app.close()


def codec_worker(
    broker,
    tmp_path: Path,
    keys: list[str] | None = None,
    without: str | None = None,
    required: bool = False,
):
    """A real worker of codec_tasks:app, its keys (if any) read from a mounted-Secret-like
    folder, one file per key id; the first key is the one it would encrypt with.
    `without` names a package the worker's Python cannot import (a missing extra);
    `required`: the worker runs only encrypted tasks."""
    env: dict[str, str] = {"CODEC_TEST_ENCRYPTION_REQUIRED": "1"} if required else {}
    if without:
        hidden = tmp_path / f"without-{without}"
        hidden.mkdir(exist_ok=True)
        (hidden / f"{without}.py").write_text(f"raise ImportError('no {without} here')\n")
        env["PYTHONPATH"] = os.pathsep.join([str(hidden), str(HERE)])
    if keys:
        folder = tmp_path / ("keys-" + "-".join(keys))
        folder.mkdir(exist_ok=True)
        for kid in keys:
            (folder / kid).write_text(KEYS[kid] + "\n")
        env |= {"EBBTIDE_ENCRYPTION_KEYS_DIR": str(folder), "EBBTIDE_ENCRYPT_WITH": keys[0]}
    return worker(broker.url, record_url=broker.record_url, app="codec_tasks:app", env=env)


def stored(broker, queue: str = "default") -> dict[str, Any]:
    """The envelope of the one task waiting on `queue`, as the broker holds it."""
    if broker.is_redis:
        (payload,) = broker.rec.hvals(f"ebbtide:q:{{{queue}}}:msgs")
        return json.loads(payload)
    with broker.amqp() as conn:  # an unacked get goes back when the channel closes
        method, _props, body = conn.channel().basic_get(f"ebbtide.{queue}", auto_ack=False)
        assert method is not None
        return json.loads(body)


def ran(broker, tag: str, n: int) -> list[str]:
    return wait_for(lambda: len(broker.done(tag)) == n and broker.done(tag), what=f"{n} {tag}")


def test_msgpack_tasks_run_with_their_values_intact(broker, tmp_path):
    values = [b"\x00\xff raw bytes", {"n": [1, 2.5, None, True], "s": "é"}, -(2**40)]
    with producer(broker.url, serializer="msgpack") as p:
        for i, value in enumerate(values):
            p.echo.send("mp", value, label=str(i))
    with codec_worker(broker, tmp_path):
        done = ran(broker, "mp", 3)
    assert sorted(done) == sorted(f"{i}|{fingerprint(v)}" for i, v in enumerate(values))


def test_zstd_compresses_over_the_threshold_and_the_task_runs(broker, tmp_path):
    with producer(broker.url) as p:
        p.echo.send("big", BIG)
        envelope = stored(broker)
        assert envelope["fmt"] == "json+zstd" and envelope["args"] is None
        assert len(json.dumps(envelope)) < len(BIG) / 20  # stored compressed
    with codec_worker(broker, tmp_path):
        assert ran(broker, "big", 1) == [f"|{fingerprint(BIG)}"]


def test_one_queue_holds_every_format_and_one_worker_runs_them_all(broker, tmp_path):
    expected = []
    settings = [
        ("json", {}),
        ("msgpack", {"serializer": "msgpack"}),
        ("sealed", {"encryption_keys": {"2026-a": KEYS["2026-a"]}}),
        ("all", {"serializer": "msgpack", "encryption_keys": KEYS, "encrypt_with": "2026-b"}),
    ]
    for label, kw in settings:
        with producer(broker.url, **kw) as p:
            for size, value in (("small", "v"), ("big", BIG)):
                p.echo.send("mix", value, label=f"{label}-{size}")
                expected.append(f"{label}-{size}|{fingerprint(value)}")
    legacy = {"id": "legacy", "task": "codec.echo", "args": ["mix", "old"], "kwargs": {}}
    broker.inject("legacy", json.dumps(legacy).encode())  # as an older producer wrote it
    expected.append(f"|{fingerprint('old')}")
    with codec_worker(broker, tmp_path, ["2026-a", "2026-b"]) as proc:
        done = ran(broker, "mix", len(expected))
        assert proc.poll() is None
    assert sorted(done) == sorted(expected)
    assert broker.dlq() == []


def test_an_unknown_format_goes_to_the_dlq_naming_it(broker, tmp_path):
    with producer(broker.url) as p:
        p.echo.send("fmt", "before")  # declares the queue
        future = {"id": "future", "task": "codec.echo", "args": None, "fmt": "cbor", "body": ""}
        broker.inject("future", json.dumps(future).encode())
        p.echo.send("fmt", "after")
    with codec_worker(broker, tmp_path) as proc:
        ran(broker, "fmt", 2)
        (dead,) = wait_for(broker.dlq, what="the unknown format in the DLQ")
        assert proc.poll() is None
    assert "unknown payload format 'cbor'" in dead["error"], dead
    assert dead["id"] == "future" and dead["task"] == "codec.echo" and dead["fmt"] == "cbor"


def test_encrypted_tasks_run_and_their_arguments_stay_sealed_in_the_dlq(broker, tmp_path):
    secret = "hunter2-plaintext-secret"
    with producer(broker.url, encryption_keys={"2026-a": KEYS["2026-a"]}) as p:
        p.echo.send("enc", secret)
        p.fails.send("encf", secret)
    with codec_worker(broker, tmp_path, ["2026-a"]):
        assert ran(broker, "enc", 1) == [f"|{fingerprint(secret)}"]
        (dead,) = wait_for(broker.dlq, what="the failed encrypted task in the DLQ")
    assert dead["fmt"] == "json+aesgcm" and dead["kid"] == "2026-a", dead
    assert "ValueError: refused" in dead["error"]
    for listing in (broker.cli("dlq", "list"), broker.cli("dlq", "list", "--json")):
        assert listing.returncode == 0, listing.stderr
        assert "codec.fails" in listing.stdout and secret not in listing.stdout


def test_an_unknown_key_goes_to_the_dlq_and_runs_once_a_worker_has_it(broker, tmp_path):
    """Rotation done too early: producers encrypt with a key the workers lack yet. The
    task is buried as it came, with the reason; replayed once the key is rolled out, it
    runs."""
    with producer(broker.url, encryption_keys=KEYS, encrypt_with="2026-b") as p:
        p.echo.send("rot", "rotated")
    with codec_worker(broker, tmp_path, ["2026-a"]) as proc:
        (dead,) = wait_for(broker.dlq, what="the task of an unknown key in the DLQ")
        assert proc.poll() is None
    assert "encrypted with key '2026-b', which this worker lacks" in dead["error"], dead
    assert broker.done("rot") == []
    with codec_worker(broker, tmp_path, ["2026-a", "2026-b"]):
        replayed = broker.cli("dlq", "replay")
        assert replayed.returncode == 0 and "replayed 1" in replayed.stdout, replayed.stderr
        assert ran(broker, "rot", 1) == [f"|{fingerprint('rotated')}"]


def test_a_worker_without_the_msgpack_extra_buries_msgpack_tasks_naming_it(broker, tmp_path):
    with producer(broker.url, serializer="msgpack") as p:
        p.echo.send("extra", "packed")
    with producer(broker.url) as p:
        p.echo.send("extra", "plain")
    with codec_worker(broker, tmp_path, without="msgpack") as proc:
        assert ran(broker, "extra", 1) == [f"|{fingerprint('plain')}"]
        (dead,) = wait_for(broker.dlq, what="the msgpack task in the DLQ")
        assert proc.poll() is None
    assert "payload format 'msgpack' cannot be read here" in dead["error"], dead
    assert "pip install 'ebbtide[msgpack]'" in dead["error"]
    assert dead["args"] == ["extra", "packed"] and dead["kwargs"] == {}  # shown, not encrypted
    with codec_worker(broker, tmp_path):
        replayed = broker.cli("dlq", "replay")
        assert replayed.returncode == 0 and "replayed 1" in replayed.stdout, replayed.stderr
        wait_for(lambda: len(broker.done("extra")) == 2, what="the replayed msgpack task")


def test_a_worker_that_requires_encryption_buries_a_forged_plaintext_task(broker, tmp_path):
    """Whoever can write to the broker but holds no key cannot make such a worker run a
    task: a plaintext one is buried, with the reason; the encrypted one runs."""
    with producer(broker.url, encryption_keys={"2026-a": KEYS["2026-a"]}) as p:
        p.echo.send("req", "sealed")
    forged = {"id": "forged", "task": "codec.echo", "args": ["req", "forged"], "kwargs": {}}
    broker.inject("forged", json.dumps(forged).encode())
    with codec_worker(broker, tmp_path, ["2026-a"], required=True) as proc:
        assert ran(broker, "req", 1) == [f"|{fingerprint('sealed')}"]
        (dead,) = wait_for(broker.dlq, what="the forged task in the DLQ")
        assert proc.poll() is None
    assert dead["id"] == "forged" and "runs only encrypted tasks" in dead["error"], dead
    assert broker.done("req") == [f"|{fingerprint('sealed')}"]
