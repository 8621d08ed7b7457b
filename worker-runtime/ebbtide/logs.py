"""Structured logs: one `key=value` line per event (or JSON with EBBTIDE_LOG_FORMAT=json)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

_logger = logging.getLogger("ebbtide")


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        fields.update(getattr(record, "fields", {}))
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        if self.as_json:
            return json.dumps(fields, default=str)
        return " ".join(f"{k}={_kv(v)}" for k, v in fields.items())


def _kv(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return json.dumps(text)
    return text


def setup(level: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(os.environ.get("EBBTIDE_LOG_FORMAT", "").lower() == "json"))
    _logger.handlers[:] = [handler]
    _logger.setLevel((level or os.environ.get("EBBTIDE_LOG_LEVEL", "INFO")).upper())
    _logger.propagate = False


def log(event: str, level: int = logging.INFO, exc_info: bool = False, **fields: Any) -> None:
    if _logger.isEnabledFor(level):
        _logger.log(level, event, extra={"fields": fields}, exc_info=exc_info)


def warn(event: str, **fields: Any) -> None:
    log(event, logging.WARNING, **fields)


def error(event: str, exc_info: bool = False, **fields: Any) -> None:
    log(event, logging.ERROR, exc_info=exc_info, **fields)
