"""/metrics, /healthz and /readyz on the worker's event loop.

Served by the loop itself, so an answer to /healthz proves the loop is responsive (a
blocked loop times the probe out), which a server thread could not show.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"


async def serve(
    host: str, port: int, metrics: Callable[[], bytes], ready: Callable[[], tuple[bool, str]]
) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) > 1 else "/"
            if path == "/metrics":
                status, ctype, body = 200, CONTENT_TYPE_METRICS, metrics()
            elif path == "/healthz":
                status, ctype, body = 200, "text/plain", b"ok\n"
            elif path == "/readyz":
                ok, why = ready()
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

    return await asyncio.start_server(handle, host, port)
