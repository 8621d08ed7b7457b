"""The RabbitMQ management API over one keep-alive HTTP connection.

A RabbitMQBroker keeps one `ManagementSession`, and the operator keeps one broker per
URL across statistics reads, so N polls cost one HTTP connection, not N. The session is thread-safe and reopens
its connection when the server has closed it (RabbitMQ drops idle keep-alive
connections after a minute).
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import threading
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from .stats import MANAGEMENT_COLUMNS

# A reused connection the server closed while idle fails on its first request: that one
# request is retried on a fresh connection; any other error is the caller's.
STALE_CONNECTION_ERRORS = (
    http.client.RemoteDisconnected,
    http.client.CannotSendRequest,
    http.client.BadStatusLine,
    BrokenPipeError,
    ConnectionResetError,
    ConnectionAbortedError,
)


class ManagementError(ConnectionError):
    """The management API answered with an error status."""


class ManagementSession:
    """GET requests to one management API on one persistent connection."""

    def __init__(
        self, management_url: str, timeout: float = 5.0, context: ssl.SSLContext | None = None
    ) -> None:
        """`context` verifies an https API (the broker's CA and host name)."""
        parts = urlsplit(management_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the RabbitMQ management URL must be http(s)://host[:port]")
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port or (15671 if self._https else 15672)
        self._timeout, self._context = timeout, context
        self._headers = {"Connection": "keep-alive", "Accept": "application/json"}
        if parts.username:
            token = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(token.encode()).decode()
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None
        self.opened = 0  # TCP connections opened so far (what reuse is measured by)

    def queues(self, vhost: str) -> list[dict]:
        """GET /api/queues/<vhost> with only the columns the statistics need."""
        result = self.get(f"/api/queues/{quote(vhost, safe='')}?columns={MANAGEMENT_COLUMNS}")
        if not isinstance(result, list):
            raise ManagementError("the management API's queue list is not a JSON list")
        return result

    def get(self, path: str) -> Any:
        with self._lock:
            reused = self._conn is not None
            try:
                return self._get(path)
            except STALE_CONNECTION_ERRORS:
                self._drop()
                if not reused:
                    raise
            except BaseException:
                self._drop()
                raise
            try:
                return self._get(path)  # the idle connection had been closed: once more
            except BaseException:
                self._drop()
                raise

    def _get(self, path: str) -> Any:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=self._context
                )
            else:
                self._conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
            self.opened += 1
        self._conn.request("GET", path, headers=self._headers)
        response = self._conn.getresponse()
        body = response.read()  # read fully, or the connection cannot be reused
        if response.will_close:
            self._drop()
        if response.status != 200:
            raise ManagementError(f"management API {path.split('?')[0]}: HTTP {response.status}")
        return json.loads(body)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._drop()
