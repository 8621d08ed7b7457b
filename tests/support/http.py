"""A plain GET for the probe and metrics endpoints tests poll."""

from __future__ import annotations

import urllib.request


def get(port: int, path: str) -> tuple[int, str] | None:
    """(status, body) from 127.0.0.1:port, or None while nothing answers yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, response.read().decode()
    except OSError:
        return None
