"""The per-TaskQueue loop keeps a fixed cadence and skips (never bunches) missed slots; a
wake-up adds a step at once (spaced from the previous one) without moving the cadence."""

from __future__ import annotations

import asyncio

from ebbtide_operator.tick import (
    WAKE_MIN_GAP_SECONDS,
    run_periodically,
    scale_message,
    stats_timeout,
)


def test_fixed_schedule_sleeps_the_rest_of_the_interval():
    now = [100.0]
    starts, sleeps, late = [], [], []

    async def main():
        async def step():
            starts.append(now[0])
            now[0] += 2.5  # the step itself takes 2.5 s of virtual time

        async def sleep(seconds):
            sleeps.append(seconds)
            now[0] += seconds

        await run_periodically(
            step,
            lambda: 10.0,
            sleep,
            stopped=lambda: len(starts) >= 4,
            lateness=late.append,
            clock=lambda: now[0],
        )

    asyncio.run(main())
    assert starts == [100.0, 110.0, 120.0, 130.0]
    assert sleeps == [7.5, 7.5, 7.5, 7.5]
    assert late == [0.0, 0.0, 0.0, 0.0]


def test_overrunning_step_is_not_followed_by_a_burst():
    now = [0.0]
    starts, sleeps = [], []

    async def main():
        async def step():
            starts.append(now[0])
            now[0] += 25.0 if len(starts) == 1 else 1.0  # the first step overruns 2.5 slots

        async def sleep(seconds):
            sleeps.append(seconds)
            now[0] += seconds

        await run_periodically(
            step,
            lambda: 10.0,
            sleep,
            stopped=lambda: len(starts) >= 3,
            clock=lambda: now[0],
            skipped=skips.append,
        )

    skips: list[int] = []
    asyncio.run(main())
    assert starts == [0.0, 25.0, 35.0]  # next slot right after the overrun, then the cadence
    assert sleeps == [9.0, 9.0]
    assert skips == [2], "the slots at 10 s and 20 s were skipped, and are counted"


def test_a_wake_up_adds_a_step_at_once_and_the_cadence_carries_on():
    now = [0.0]
    wake_at = [3.0, 3.15]  # the second comes 0.05 s after the first woken step ended
    starts, late, woken = [], [], []

    async def main():
        wake = asyncio.Event()

        async def step():
            starts.append(now[0])
            now[0] += 0.1

        async def sleep(seconds):
            if wake_at and wake_at[0] < now[0] + seconds:
                now[0] = wake_at.pop(0)
                wake.set()
                await asyncio.Event().wait()  # cut short by the wake-up
            now[0] += seconds

        await run_periodically(
            step,
            lambda: 10.0,
            sleep,
            stopped=lambda: len(starts) >= 4,
            lateness=late.append,
            clock=lambda: now[0],
            wake=wake,
            woken=lambda: woken.append(now[0]),
        )

    asyncio.run(main())
    assert starts == [0.0, 3.0, 3.0 + WAKE_MIN_GAP_SECONDS, 10.0]
    assert len(woken) == 2 and late == [0.0, 0.0]


def test_a_wake_up_during_the_initial_delay_is_a_woken_step_too():
    """main.poll sends a woken step's API calls down the scale lane: it must hear of it."""
    now = [0.0]
    starts, woken = [], []

    async def main():
        wake = asyncio.Event()

        async def step():
            starts.append(now[0])

        async def sleep(seconds):
            if not wake.is_set() and not starts:
                now[0] = 1.0
                wake.set()
                await asyncio.Event().wait()  # cut short by the wake-up
            now[0] += seconds

        await run_periodically(
            step,
            lambda: 10.0,
            sleep,
            stopped=lambda: len(starts) >= 1,
            clock=lambda: now[0],
            initial_delay=4.0,
            wake=wake,
            woken=lambda: woken.append(now[0]),
        )

    asyncio.run(main())
    assert starts == [1.0] and woken == [1.0]


def test_stats_timeout_bounds():
    assert stats_timeout(1) == 0.8 and stats_timeout(60) == 5.0 and stats_timeout(0.1) == 0.5


def test_scale_message():
    assert scale_message(2, 6, "backlog 1200, drain 95s > target 30s") == (
        "ScaledUp",
        "2→6: backlog 1200, drain 95s > target 30s",
    )
    assert scale_message(6, 1, "idle")[0] == "ScaledDown"


def test_the_drift_check_is_skipped_only_while_nothing_it_depends_on_changed():
    from ebbtide_operator.tick import _sync_key

    body = {"metadata": {"uid": "u1", "generation": 3}}
    live = {"metadata": {"resourceVersion": "10"}}
    stamp = (3, "cred-a", ())
    key = _sync_key(body, live, stamp)
    assert key == _sync_key(body, {"metadata": {"resourceVersion": "10"}}, (3, "cred-a", ()))
    assert key != _sync_key(body, {"metadata": {"resourceVersion": "11"}}, stamp)
    assert key != _sync_key({"metadata": {"uid": "u1", "generation": 4}}, live, stamp)
    assert key != _sync_key(body, live, (3, "cred-b", ()))
    assert key != _sync_key(body, live, (3, "cred-a", (("q", 2),)))  # a shard drained
    assert key != _sync_key(body, live, None)
    assert _sync_key({"metadata": {"uid": "u1"}}, live, stamp) is None  # no generation
    assert _sync_key(body, None, stamp) is None
