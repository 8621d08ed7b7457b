"""In-cluster Service names, resolved to their ClusterIPs in an e2e test's host process.

The host has no cluster DNS, and a TLS broker's certificate names its Service
(`<svc>.<ns>.svc`), not its ClusterIP: so a host process keeps the name in the URL (the
client verifies it) and this routes it to the ClusterIP, which kube-proxy serves.
EBBTIDE_E2E_HOSTS is `name=ip,name=ip`; the tests' kit sets it (kit.via_cluster_ip).
"""

from __future__ import annotations

import os
import socket

_routes: dict[str, str] = {}
_real_getaddrinfo = socket.getaddrinfo


def _getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
    return _real_getaddrinfo(_routes.get(host, host), *args, **kwargs)


def install(routes: dict[str, str]) -> None:
    _routes.update(routes)
    socket.getaddrinfo = _getaddrinfo


def install_from_env() -> None:
    pairs = [
        p.split("=", 1) for p in os.environ.get("EBBTIDE_E2E_HOSTS", "").split(",") if "=" in p
    ]
    if pairs:
        install(dict(pairs))
