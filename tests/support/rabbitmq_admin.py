"""Management-API helpers for tests: one vhost per test keeps them isolated."""

from __future__ import annotations

import base64
import json
import urllib.request
from urllib.parse import quote, urlsplit


def _request(management_url: str, method: str, path: str, body: dict | None = None):
    parts = urlsplit(management_url)
    req = urllib.request.Request(
        f"http://{parts.hostname}:{parts.port}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"content-type": "application/json"},
    )
    token = base64.b64encode(f"{parts.username}:{parts.password}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback test server
        data = resp.read()
    return json.loads(data) if data else None


def create_vhost(management_url: str, vhost: str) -> None:
    v = quote(vhost, safe="")
    _request(management_url, "PUT", f"/api/vhosts/{v}", {})
    _request(
        management_url,
        "PUT",
        f"/api/permissions/{v}/guest",
        {"configure": ".*", "write": ".*", "read": ".*"},
    )


def delete_vhost(management_url: str, vhost: str) -> None:
    _request(management_url, "DELETE", f"/api/vhosts/{quote(vhost, safe='')}")
