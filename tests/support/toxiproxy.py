"""Shopify's toxiproxy as a child process: real TCP proxies on loopback whose links the
chaos tests slow down or cut (this kernel has no `tc netem`).

The binary is built from its Go module by scripts/build-toxiproxy.sh (`make test` runs
it); EBBTIDE_TOXIPROXY names another one.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from support.servers import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]


def toxiproxy_binary() -> str:
    """The toxiproxy-server to run, built on first use (one line of error if it cannot be)."""
    if exe := os.environ.get("EBBTIDE_TOXIPROXY"):
        return exe
    built = subprocess.run(
        [str(ROOT / "scripts" / "build-toxiproxy.sh")], capture_output=True, text=True
    )
    if built.returncode != 0:
        raise RuntimeError(f"toxiproxy could not be built: {built.stderr.strip()[-300:]}")
    return built.stdout.strip().splitlines()[-1]


class Toxiproxy:
    """A running toxiproxy-server and its HTTP API (https://github.com/Shopify/toxiproxy)."""

    def __init__(self, api_port: int) -> None:
        self.api = f"http://127.0.0.1:{api_port}"

    def _call(self, method: str, path: str, body: dict | None = None) -> dict | None:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.api}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def proxy(self, name: str, upstream_port: int) -> int:
        """A new proxy from a free loopback port to 127.0.0.1:`upstream_port`; its port."""
        port = free_port()
        self._call(
            "POST",
            "/proxies",
            {"name": name, "listen": f"127.0.0.1:{port}", "upstream": f"127.0.0.1:{upstream_port}"},
        )
        return port

    def blackhole(self, name: str) -> None:
        """Drop every byte both ways and never close: a half-open link, as when a node or
        a NAT entry vanishes (the `timeout` toxic with timeout 0)."""
        for stream in ("upstream", "downstream"):
            self._call(
                "POST",
                f"/proxies/{name}/toxics",
                {
                    "name": f"blackhole-{stream}",
                    "type": "timeout",
                    "stream": stream,
                    "attributes": {"timeout": 0},
                },
            )

    def latency(self, name: str, ms: int, jitter_ms: int = 0) -> None:
        """Delay each direction by `ms` (a round trip gains twice that)."""
        for stream in ("upstream", "downstream"):
            self._call(
                "POST",
                f"/proxies/{name}/toxics",
                {
                    "name": f"latency-{stream}",
                    "type": "latency",
                    "stream": stream,
                    "attributes": {"latency": ms, "jitter": jitter_ms},
                },
            )

    def heal(self, name: str) -> None:
        """Remove every toxic of a proxy, and cut the connections the blackhole held, so
        clients reconnect to a clean link (data dropped mid-stream cannot be resumed)."""
        proxy = self._call("GET", f"/proxies/{name}")
        for toxic in (proxy or {}).get("toxics", []):
            self._call("DELETE", f"/proxies/{name}/toxics/{toxic['name']}")
        self._call("POST", f"/proxies/{name}", {"enabled": False})
        self._call("POST", f"/proxies/{name}", {"enabled": True})


@contextlib.contextmanager
def toxiproxy_server() -> Iterator[Toxiproxy]:
    """Start toxiproxy-server on a free loopback port; stop it at exit."""
    port = free_port()
    proc = subprocess.Popen(
        [toxiproxy_binary(), "-host", "127.0.0.1", "-port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, 10, proc)
        yield Toxiproxy(port)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
