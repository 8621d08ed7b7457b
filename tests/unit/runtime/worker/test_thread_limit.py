"""The thread limit's climb: down while the process is GIL-bound, up while it waits."""

from __future__ import annotations

import pytest
from ebbtide.worker import thread_limit as tl
from ebbtide.worker.thread_limit import CpuUse, ThreadLimit, direction, next_limit, start_limit


def use(cpu: float, waited: float = 0.0):
    return lambda: CpuUse(cpu, waited)


class Clocks:
    """The wall and CPU clocks a pool would read, for one ThreadLimit."""

    def __init__(self, limit: ThreadLimit) -> None:
        self.limit, self.now, self.cpu, self.waited = limit, 100.0, 0.0, 0.0
        limit.tick(self.now, use(0.0), 0, True)  # the first tick starts the first window

    def windows(self, busy, n: int, saturated: bool = True, waiting=lambda _: 0.0) -> list[int]:
        """`n` windows (one tick each, just over WINDOW_S, WINDOW_TASKS done); `busy(limit)`
        is the process's CPU in cores at a limit, `waiting(limit)` the CPU its threads
        waited for. Returns the limit after each window."""
        seen, step = [], tl.WINDOW_S * 1.01
        for _ in range(n):
            self.now += step
            self.cpu += busy(self.limit.limit) * step
            self.waited += waiting(self.limit.limit) * step
            self.limit.tick(self.now, use(self.cpu, self.waited), tl.WINDOW_TASKS, saturated)
            seen.append(self.limit.limit)
        return seen


def windows(limit: ThreadLimit, busy, n: int, saturated: bool = True, waiting=None) -> list[int]:
    return Clocks(limit).windows(busy, n, saturated, waiting or (lambda _: 0.0))


@pytest.mark.parametrize(
    "limit, busy, expected",
    [
        (5, 0.95, 4),  # GIL-bound: one fewer
        (2, 1.0, 2),  # never below the floor
        (5, 0.5, 6),  # waiting on I/O: one more
        (8, 0.5, 8),  # never above the ceiling
        (5, 0.8, 5),  # in the band: stay
        (5, 1.9, 6),  # two cores busy: C code running in parallel, more threads pay
    ],
)
def test_next_limit_steps_by_one_within_floor_and_ceiling(limit, busy, expected):
    assert next_limit(limit, 8, direction(busy)) == expected


def test_the_first_moves_halve_or_double():
    assert next_limit(4, 8, direction(1.0), leap=True) == 2
    assert next_limit(4, 8, direction(0.3), leap=True) == 8
    assert next_limit(6, 8, direction(0.3), leap=True) == 8  # never above the ceiling
    assert windows(ThreadLimit(8), lambda limit: 1.0, 4) == [2, 2, 2, 2]
    assert windows(ThreadLimit(8), lambda limit: 0.3, 3) == [8, 8, 8]
    assert windows(ThreadLimit(64), lambda limit: 1.0, 4) == [5, 2, 2, 2]
    assert windows(ThreadLimit(64), lambda limit: 0.3, 4) == [22, 44, 64, 64]


@pytest.mark.parametrize(
    "ceiling, start", [(1, 1), (2, 2), (3, 2), (4, 3), (8, 4), (16, 6), (64, 11)]
)
def test_it_starts_in_the_geometric_middle_of_floor_and_ceiling(ceiling, start):
    # Either end is then as few halvings or doublings away; the ceiling, where it once
    # started, is the most hand-offs a GIL-bound pool can pay.
    assert start_limit(ceiling) == start
    assert ThreadLimit(ceiling).limit == start
    assert ThreadLimit(ceiling, adaptive=False).limit == ceiling


def test_a_gil_bound_pool_settles_where_the_cpu_drops_into_the_band():
    # More threads, more hand-offs: the CPU climbs with the limit (made-up curves).
    assert windows(ThreadLimit(8), lambda limit: 0.6 + 0.06 * limit, 8) == [4] * 8
    # Halving overshoots (0.72 at 2, below LOW): one back up, then it stays.
    assert windows(ThreadLimit(8), lambda limit: min(1.05, 0.52 + 0.1 * limit), 8) == [2] + [3] * 7
    # Past the first search it steps: 0.93 at 3 is too busy, 0.83 at 2 is not.
    assert (
        windows(ThreadLimit(16), lambda limit: min(1.05, 0.63 + 0.1 * limit), 6) == [3, 2] + [2] * 4
    )


def test_a_turn_ends_the_search_and_steps_by_one():
    # Too few at 4 (I/O wait), doubled to 8: too many there (the GIL): back one at a time.
    busy = {8: 1.0, 7: 1.0, 6: 0.85}
    assert windows(ThreadLimit(8), lambda limit: busy.get(limit, 0.5), 5) == [8, 7, 6, 6, 6]


def test_threads_waiting_on_io_climb_back_to_the_ceiling():
    clocks = Clocks(ThreadLimit(8))
    assert clocks.windows(lambda _: 1.0, 3) == [2, 2, 2]
    assert clocks.windows(lambda _: 0.3, 7) == [3, 4, 5, 6, 7, 8, 8]


def test_windows_without_tasks_waiting_teach_nothing():
    assert windows(ThreadLimit(8), lambda _: 1.0, 10, saturated=False) == [4] * 10


def test_an_idle_gap_starts_the_window_again():
    limit = ThreadLimit(8)
    limit.tick(0.0, use(0.0), 0, True)
    # One tick after a long idle spell: its CPU share (tiny) would say "climb", but the
    # spell was idle, not waiting on I/O; it only starts a new window.
    assert limit.tick(10.0, use(9.0), tl.WINDOW_TASKS, True) is None
    assert limit.limit == 4


def test_a_window_needs_its_time_and_its_tasks():
    short, few = ThreadLimit(8), ThreadLimit(8)
    short.tick(0.0, use(0.0), 0, True)
    assert short.tick(tl.WINDOW_S / 2, use(1.0), 1000, True) is None  # too short
    few.tick(0.0, use(0.0), 0, True)
    ticks = [0.2 * i for i in range(1, 5)]  # 0.8 s, 4 tasks: not a window yet...
    assert [few.tick(t, use(t), 1, True) for t in ticks] == [None] * 4
    assert few.tick(tl.MAX_WINDOW_S, use(1.0), 1, True) == 2  # ...until MAX_WINDOW_S


def test_a_fixed_limit_and_a_single_thread_never_move():
    assert windows(ThreadLimit(3, adaptive=False), lambda _: 1.0, 5) == [3] * 5
    assert windows(ThreadLimit(1), lambda _: 0.1, 5) == [1] * 5


@pytest.mark.parametrize(
    "used, waited, move",
    [
        (0.55, 1.2, -1),  # a GIL-bound process on CPUs too few for it: fewer, not more
        (0.55, 0.0, 1),  # the same CPU with nothing waited for: I/O wait, more
        (0.35, 0.5, 1),  # woken from sockets, each thread waits a little: still I/O, more
        (0.8, 0.6, 0),  # in the band
        (0.9, 0.6, 0),  # one process, GIL-bound, at HIGH: as before
        (0.95, 0.6, -1),  # past HIGH: fewer, as before
        (1.0, 2.0, -1),  # many threads ready at once is no sign of running in parallel
        (1.6, 0.2, 1),  # CPU used past PARALLEL: C code in parallel
    ],
)
def test_cpu_waited_for_counts_as_wanted_but_never_as_parallel(used, waited, move):
    assert direction(used, waited) == move


def test_two_starved_processes_come_down_instead_of_climbing_to_the_ceiling():
    """Two worker processes and a broker on two cores: each gets 0.5-0.6 of a core. Read
    alone, that CPU says 'I/O wait' and the limit climbed 4 -> 8 in its first window
    (docs/benchmarks.md, 2026-12-08); with what the threads waited for, it comes down."""
    assert windows(ThreadLimit(8), lambda _: 0.55, 3) == [8, 8, 8]
    assert windows(ThreadLimit(8), lambda _: 0.55, 3, waiting=lambda _: 1.2) == [2, 2, 2]
    # A broker 2 ms away: 0.35 of a core used, 0.5 waited by threads woken from their
    # sockets. That is I/O: the limit still climbs to the ceiling.
    assert windows(ThreadLimit(8), lambda _: 0.35, 3, waiting=lambda _: 0.5) == [8, 8, 8]


def test_a_thread_that_ended_takes_its_wait_along_and_reads_as_none():
    limit = ThreadLimit(8)
    limit.tick(0.0, use(0.0, 5.0), 0, True)
    # 0.5 cores used and the waits summed fell: not a negative wait, none (so: more).
    assert limit.tick(tl.WINDOW_S * 1.01, use(0.05, 1.0), tl.WINDOW_TASKS, True) == 8
