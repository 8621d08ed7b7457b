"""/metrics, /healthz and /readyz on the worker's event loop.

Served by the loop itself, so an answer to /healthz proves the loop is responsive (a
blocked loop times the probe out), which a server thread could not show. A child of
`--processes N` serves the same probes on a Unix socket, for its supervisor only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"

Check = Callable[[], tuple[bool, str]]


def _alive() -> tuple[bool, str]:
    return True, "ok"


def _handler(metrics: Callable[[], bytes], ready: Check, healthy: Check):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) > 1 else "/"
            if path == "/metrics":
                status, ctype, body = 200, CONTENT_TYPE_METRICS, metrics()
            elif path in ("/healthz", "/readyz"):
                ok, why = (healthy if path == "/healthz" else ready)()
                status, ctype, body = (200 if ok else 503), "text/plain", (why + "\n").encode()
            else:
                status, ctype, body = 404, "text/plain", b"not found\n"
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    return handle


async def serve(
    host: str,
    port: int,
    metrics: Callable[[], bytes],
    ready: Check,
    healthy: Check = _alive,
) -> asyncio.Server:
    return await asyncio.start_server(_handler(metrics, ready, healthy), host, port)


async def serve_unix(path: str, metrics: Callable[[], bytes], ready: Check) -> asyncio.Server:
    return await asyncio.start_unix_server(_handler(metrics, ready, _alive), path)


async def ask(path: str, what: str, timeout: float = 2.0) -> tuple[bool, str]:
    """GET `what` (/healthz, /readyz) from a child's Unix socket: (2xx?, its body)."""

    async def call() -> tuple[bool, str]:
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            writer.write(f"GET {what} HTTP/1.0\r\n\r\n".encode())
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1:2]
        return status == [b"200"], body.decode("latin-1").strip()

    try:
        return await asyncio.wait_for(call(), timeout)
    except (OSError, TimeoutError, IndexError) as exc:
        return False, f"no answer ({exc.__class__.__name__})"
