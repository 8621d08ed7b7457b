"""The adaptive prefetch window: sized by time (~50 ms of queued work), never below the
fixed concurrency + prefetch window, never above it when --prefetch was given."""

from __future__ import annotations

from ebbtide.brokers.rabbitmq.window import HOLD_S, MAX_EXTRA, SAMPLE_S, SHRINK_AFTER, Window


def run_at(window: Window, rate: float, samples: int) -> list[int | None]:
    """Feed `samples` intervals of `rate` completions/s; the decisions, applied."""
    now = getattr(window, "_test_now", 0.0)
    if now == 0.0:
        assert window.tick(now) is None  # the first tick opens the first interval
    out = []
    for _ in range(samples):
        window.completed(round(rate * SAMPLE_S))
        now += SAMPLE_S
        want = window.tick(now)
        if want is not None:
            window.current = want
        out.append(want)
    window._test_now = now
    return out


def test_a_fixed_window_never_moves():
    w = Window(floor=16, concurrency=8, adaptive=False)
    assert run_at(w, 5000, 10) == [None] * 10
    assert w.current == 16 and w.cap == 16


def test_slow_tasks_keep_the_floor():
    w = Window(floor=16, concurrency=8)
    assert run_at(w, 8, 10) == [None] * 10  # 1 s tasks on 8 slots: 0.4 tasks per 50 ms
    assert w.want(100) == 16


def test_fast_tasks_hold_about_fifty_milliseconds_of_work():
    w = Window(floor=16, concurrency=8)
    decisions = run_at(w, 3000, 3)
    assert decisions[0] == 8 + round(3000 * HOLD_S)  # 158: grows at the first sample
    assert w.current == 158
    assert w.want(1e6) == 16 + MAX_EXTRA  # capped whatever the rate


def test_small_changes_are_ignored():
    w = Window(floor=16, concurrency=8)
    run_at(w, 3000, 1)
    assert run_at(w, 3300, 5) == [None] * 5  # 173 is within 25% of 158


def test_it_shrinks_only_after_a_second_of_low_rates():
    w = Window(floor=16, concurrency=8)
    run_at(w, 4000, 1)
    assert w.current == 208
    decisions = run_at(w, 0, SHRINK_AFTER + 1)
    # The 4000/s sample is still among the last SHRINK_AFTER: no shrink yet ...
    assert decisions[: SHRINK_AFTER - 1] == [None] * (SHRINK_AFTER - 1)
    assert 16 in decisions and w.current == 16  # ... then straight back to the floor


def test_one_slow_sample_does_not_shrink_it():
    w = Window(floor=16, concurrency=8)
    run_at(w, 4000, 1)
    for rate in (4000, 500, 4000, 4000, 300, 4000, 4000):
        run_at(w, rate, 1)
    assert w.current == 208


def test_reset_starts_a_new_channel_at_the_floor():
    w = Window(floor=16, concurrency=8)
    run_at(w, 4000, 2)
    w.reset()
    assert w.current == 16
    assert w.tick(100.0) is None  # the first tick only opens an interval
    w.completed(10_000)
    assert w.tick(100.0 + SAMPLE_S) == 16 + MAX_EXTRA
