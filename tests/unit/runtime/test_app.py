"""App and task-handle behaviour that needs no broker."""

from __future__ import annotations

import ebbtide
import pytest
from ebbtide.app import _split_item


def test_task_registration_and_local_call():
    app = ebbtide.App(broker_url="redis://127.0.0.1:1/0")

    @app.task
    def plain(x):
        return x * 2

    @app.task(name="custom", queue="q", max_retries=1, timeout=5, priority=3, rate="10/s")
    async def coro(x):
        return x

    assert plain(4) == 8
    assert app.tasks["custom"] is coro and coro.is_async and coro.rate == (10, 1000)
    assert plain.name.endswith("plain") and plain.queue == "default"


def test_bad_options_are_refused():
    app = ebbtide.App(broker_url="rediss://example:6380/0")
    with pytest.raises(ValueError, match="priority must be 0..9"):
        app.task(priority=12)(lambda: None)
    with pytest.raises(ValueError, match="max_retries"):
        app.task(max_retries=-1)(lambda: None)
    with pytest.raises(ValueError, match="bad rate"):
        app.task(rate="fast")(lambda: None)
    with pytest.raises(ValueError, match="max_backlog"):
        app.queue("q", max_backlog=-1)


def test_unknown_scheme_is_clear():
    with pytest.raises(ebbtide.UnsupportedBroker, match="'kafka'"):
        ebbtide.App(broker_url="kafka://x")


def test_send_many_items():
    assert _split_item((1, 2)) == ((1, 2), {})
    assert _split_item(((1,), {"a": 2})) == ((1,), {"a": 2})
    assert _split_item(5) == ((5,), {})
    assert _split_item("ab") == (("ab",), {})
