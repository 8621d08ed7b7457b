"""A small JSON client for the API server, on top of the kubernetes package's transport.

The kubernetes package loads the kubeconfig (client certificates, tokens, CA) and owns the
connection pool; requests and watches go through its raw `call_api`, with plain dicts in
and out. That skips its model (de)serialization, which is slow and would hide fields.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import urllib3
from kubernetes import client, config


class ApiError(Exception):
    """A failed request: `status` is the HTTP status, 0 when the server was unreachable."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message


class Api:
    """JSON requests and watch streams against the cluster of a kubeconfig."""

    def __init__(self, kubeconfig: str) -> None:
        configuration = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        configuration.connection_pool_maxsize = 32
        self._client = client.ApiClient(configuration)
        self._client.user_agent = "ebbtide-process-kubelet/0.1"

    def _send(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None,
        body: Any,
        content_type: str,
        timeout: float | tuple[float, float],
    ) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        request = self._client.param_serialize(
            method,
            path,
            query_params=[(k, v) for k, v in (query or {}).items() if v is not None],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            return self._client.call_api(*request, _request_timeout=timeout)
        except client.ApiException as error:
            raise ApiError(error.status or 0, str(error.reason)) from error
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise ApiError(0, f"{method} {path}: {error}") from error

    @staticmethod
    def _error(response: Any, data: bytes) -> ApiError:
        try:
            message = json.loads(data).get("message") or response.reason
        except (ValueError, AttributeError):
            message = data.decode(errors="replace")[:500] or response.reason
        return ApiError(response.status, message)

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """One request; the decoded JSON response, or ApiError."""
        response = self._send(method, path, query, body, content_type, timeout)
        try:
            data = response.read()
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise ApiError(0, f"{method} {path}: {error}") from error
        if not 200 <= response.status < 300:
            raise self._error(response, data)
        return json.loads(data) if data else {}

    def watch(
        self, path: str, query: Mapping[str, Any], timeout_seconds: int
    ) -> Iterator[dict[str, Any]]:
        """Watch events (`{"type": ..., "object": ...}`) until the server ends the watch
        after `timeout_seconds` (or the connection fails: ApiError)."""
        query = {
            **query,
            "watch": "true",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        response = self._send("GET", path, query, None, "", (10.0, timeout_seconds + 30.0))
        raw = response.response
        try:
            if response.status != 200:
                raise self._error(response, raw.read())
            buffer = bytearray()
            for chunk in raw.stream(amt=None, decode_content=True):
                buffer.extend(chunk)
                while (newline := buffer.find(b"\n")) != -1:
                    line = bytes(buffer[:newline])
                    del buffer[: newline + 1]
                    if line.strip():
                        yield json.loads(line)
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise ApiError(0, f"watch {path}: {error}") from error
        finally:
            raw.close()
            raw.release_conn()
