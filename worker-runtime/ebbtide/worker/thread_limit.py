"""How many task threads may start tasks at once, from how busy the process is.
Pure: no threads, no clocks of its own (the pool feeds it).

Python runs one thread at a time (the GIL). A sync task making a quick network call
releases the GIL twice, and each release with threads waiting hands it to another
thread, often on another CPU. With many threads and a near broker those hand-offs, not
the tasks, become most of the worker's time: on a 2-core machine, 8 threads each
looping on one loopback INCR do about half of what 3 do (bench/gil_threads.py).
Tasks that wait long (an HTTP call) are the other way round: more threads, more done.

The telling sign is the process's CPU use while tasks wait for a thread. Near one core,
the GIL is the bottleneck and another thread only adds hand-offs. Well under it, the
threads wait on I/O, and another one gets more done; well over it, tasks run C code
that lets go of the GIL (zlib, Pillow, numpy) in parallel, and another one gets more
done too. So the pool keeps `--concurrency` threads (the slots) and lets `limit` of
them start tasks: one fewer after a saturated window between HIGH and PARALLEL cores,
one more after one below LOW or above PARALLEL.

The CPU a process used is not what it asked for when the CPUs are short: two worker
processes and the broker on two cores each got 0.5-0.6 of a core, which read as I/O
wait, and the limit climbed to the ceiling, the most hand-offs (docs/benchmarks.md,
"2026-12-08"). So the pool also reads how long its threads were ready to run but
waited for a CPU (`CpuUse.waited`, the kernel's schedstat: cpu_use.py), summed over
its threads. Every thread woken from a socket waits a little for a CPU, so that sum
is large even for tasks that wait on I/O (0.4-0.65 of a core here, with a broker 2 ms
away). What tells starvation is STARVED: a whole core or more, i.e. on average at
least one of its threads always ready and not running (1.0-1.4 in that two-process
run). Then another thread cannot run either: one fewer.

Where it starts: at the geometric middle of FLOOR and the ceiling (4 of 8), and the
first moves halve or double it until a window stays put or turns back, so either end is
a window or two away. Starting at the ceiling, as it once did, ran the first windows at
the worst hand-off cost: 8 threads, then 4 (docs/benchmarks.md, "2026-12-04").

Why not compare rates directly: at one fixed limit they varied from 1,400/s to 6,600/s
between 100 ms windows here (the broker, the VM), where the CPU share moved by about
ten points. A task running
for longer than the pool's BLOCKED_S stops counting against the limit (pool.py), so a
slow task never holds the others back for longer than that.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

WINDOW_S = 0.1  # a window lasts at least this long...
WINDOW_TASKS = 50  # ...and holds this many completions, unless it reaches MAX_WINDOW_S
MAX_WINDOW_S = 1.0
GAP_S = 0.5  # no tick for this long (the pool idled): the window starts again
SATURATED = 0.9  # share of a window's ticks with tasks waiting, for the window to count
HIGH, LOW = 0.9, 0.75  # the process's CPU, in cores: above HIGH one fewer, below LOW one more
PARALLEL = 1.25  # above this many cores, tasks run in parallel (C code without the GIL:
# zlib, Pillow, numpy): more threads pay, as below LOW
FLOOR = 2  # never fewer: with two, one thread's I/O wait is another's turn to run
STARVED = 1.0  # cores of CPU waited for (ready threads, summed): at least one always waits


class CpuUse(NamedTuple):
    """A process's CPU seconds so far: `used` running, `waited` ready to run but not
    running (its threads, summed; 0 where the kernel does not say)."""

    used: float
    waited: float = 0.0


@dataclass
class ThreadLimit:
    """`tick()` on every batch of completions; `limit` is what the pool obeys. Not
    adaptive: `limit` stays at `ceiling` (a fixed --thread-limit)."""

    ceiling: int
    adaptive: bool = True

    def __post_init__(self) -> None:
        self.ceiling = max(1, self.ceiling)
        self.limit = start_limit(self.ceiling) if self.adaptive else self.ceiling
        self._leaping = True  # halve or double, not step, until the first turn or stop
        self._last_move = 0
        self._start: float | None = None
        self._last = 0.0
        self._cpu = CpuUse(0.0)
        self._done = self._ticks = self._waiting = 0
        self.last_window = (0.0, 0.0)  # the last window's CPU used and waited for, in cores

    def tick(
        self, now: float, cpu: Callable[[], CpuUse], completed: int, saturated: bool
    ) -> int | None:
        """At `now`: `completed` tasks ended since the last tick; `saturated`: tasks were
        waiting for a thread; `cpu()` reads the process's CpuUse, only when a window
        opens or closes (a few times a second, not on every tick). Returns the new limit
        when it changes, else None."""
        if not self.adaptive or self.ceiling == 1:
            return None
        gap = self._start is None or now - self._last > GAP_S
        self._last = now
        if gap:  # an idle spell says nothing about the limit
            self._restart(now, cpu())
            return None
        assert self._start is not None
        self._done += completed
        self._ticks += 1
        self._waiting += bool(saturated)
        elapsed = now - self._start
        if elapsed < WINDOW_S or (self._done < WINDOW_TASKS and elapsed < MAX_WINDOW_S):
            return None
        use, start = cpu(), self._cpu
        busy = (use.used - start.used) / elapsed
        # A thread that ended takes its wait with it: never less than none.
        waited = max(0.0, use.waited - start.waited) / elapsed
        full = self._waiting >= SATURATED * self._ticks
        self.last_window = (busy, waited)
        self._restart(now, use)
        if not full:  # the limit did not hold tasks back: nothing to learn
            return None
        move = direction(busy, waited)
        leap = self._leaping and move != 0 and move != -self._last_move
        limit = next_limit(self.limit, self.ceiling, move, leap=leap)
        if not leap or limit == self.limit:
            self._leaping = False  # the search turned back, stopped, or hit a bound
        self._last_move = move
        return self._set(limit)

    def _set(self, limit: int) -> int | None:
        if limit == self.limit:
            return None
        self.limit = limit
        return limit

    def _restart(self, now: float, cpu: CpuUse) -> None:
        self._start, self._cpu = now, cpu
        self._done = self._ticks = self._waiting = 0


def start_limit(ceiling: int) -> int:
    """The geometric middle of the floor and the ceiling: halving or doubling from
    there reaches either in the same few windows."""
    floor = min(FLOOR, ceiling)
    return max(floor, min(ceiling, round(math.sqrt(floor * ceiling))))


def direction(busy_cores: float, waiting_cores: float = 0.0) -> int:
    """-1: the GIL is the bottleneck, or the CPUs are (fewer threads); +1: the threads
    wait on I/O, or run C code in parallel (more); 0: stay. `busy_cores`: CPU used;
    `waiting_cores`: CPU its threads were ready for and did not get, summed."""
    if busy_cores > PARALLEL:
        return 1
    if busy_cores > HIGH or waiting_cores >= STARVED:
        return -1
    if busy_cores < LOW:
        return 1
    return 0


def next_limit(limit: int, ceiling: int, move: int, leap: bool = False) -> int:
    """After a saturated window whose CPU gave `move` (`direction`); `leap`: the first
    search from the start, by halves and doubles rather than by one."""
    floor = min(FLOOR, ceiling)
    if move < 0:
        return max(floor, limit // 2 if leap else limit - 1)
    if move > 0:
        return min(ceiling, limit * 2 if leap else limit + 1)
    return max(floor, limit)
