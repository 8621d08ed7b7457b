"""Ebbtide's worker runtime and producer API.

    app = ebbtide.App(broker_url="redis://...")

    @app.task(queue="emails", max_retries=5)
    def send_email(to): ...

    send_email.send("a@example.com")

Names are imported lazily so `import ebbtide` stays cheap for producers and operators.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "App",
    "BacklogFull",
    "BadPayload",
    "BatchNotStored",
    "BrokerEvicts",
    "BrokerUrlFileError",
    "EbbtideError",
    "InvalidArguments",
    "PartiallyEnqueued",
    "PayloadTooLarge",
    "Task",
    "TaskTimeout",
    "UnsupportedBroker",
    "keys_from_dir",
    "read_stats",
]

_WHERE = {
    "App": "app",
    "Task": "app",
    "BacklogFull": "errors",
    "BadPayload": "errors",
    "BatchNotStored": "errors",
    "BrokerEvicts": "errors",
    "BrokerUrlFileError": "errors",
    "InvalidArguments": "errors",
    "PartiallyEnqueued": "errors",
    "EbbtideError": "errors",
    "PayloadTooLarge": "errors",
    "UnsupportedBroker": "errors",
    "TaskTimeout": "errors",
    "read_stats": "stats",
    "keys_from_dir": "codec",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'ebbtide' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
