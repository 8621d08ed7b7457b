"""How many unacked deliveries one queue's consumers may hold: pure, no I/O.

RabbitMQ pushes deliveries up to the consumer's prefetch window, and a finished task's
slot is only refilled one round trip (ack -> broker -> next delivery) later. With the
fixed window `concurrency + prefetch` (16 by default) that round trip, not the CPU,
bounds a worker running short tasks.

The window therefore adapts, by TIME rather than by count: the unstarted part of the
window is sized so that a prefetched delivery waits about `hold_s` (50 ms) before it
starts, at the completion rate the worker has just measured:

    window = clamp(concurrency + rate * hold_s, floor, floor + max_extra)

where `floor = concurrency + prefetch` is the fixed window Ebbtide always had. Slow tasks
(a low rate) keep exactly the floor; only a worker that finishes hundreds of tasks a
second holds more, and what it holds is at most ~50 ms of its own work, so an autoscaled
pod never sits on work another pod could start sooner. A rate that falls (idle queue,
slower tasks) shrinks the window back. An explicit `--prefetch` turns adaptation off.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

HOLD_S = 0.05  # the wait of a prefetched delivery the window is sized for
MAX_EXTRA = 256  # never more than this many beyond the floor, whatever the rate
SAMPLE_S = 0.1  # completions are counted over intervals of this length...
FIRST_SAMPLE_S = 0.02  # ...but the first after a (re)start is short: until it ends, the
# window is the floor, and a worker running short tasks idles on the floor's round trips
GROW, SHRINK = 1.25, 0.5  # resize only past these ratios of the current window
SHRINK_AFTER = 10  # shrink on the highest rate of this many intervals (1 s): a shrink
# cancels the extra consumers, and what crosses the cancel comes back as a redelivery


@dataclass
class Window:
    floor: int  # concurrency + prefetch: the fixed window, and the minimum
    concurrency: int
    adaptive: bool = True
    hold_s: float = HOLD_S
    max_extra: int = MAX_EXTRA
    _rates: deque[float] = field(default_factory=lambda: deque(maxlen=SHRINK_AFTER))

    def __post_init__(self) -> None:
        self.floor = max(1, self.floor)
        self.current = self.floor
        self._count = 0
        self._since: float | None = None

    @property
    def cap(self) -> int:
        return self.floor + self.max_extra if self.adaptive else self.floor

    def completed(self, n: int = 1) -> None:
        """`n` deliveries of this queue were settled (acked, retried or dead)."""
        self._count += n

    def want(self, rate: float) -> int:
        """The window for a completion rate (per second)."""
        if not self.adaptive:
            return self.floor
        return min(self.cap, max(self.floor, self.concurrency + math.ceil(rate * self.hold_s)))

    def sample_s(self) -> float:
        """How long the current interval lasts: FIRST_SAMPLE_S until the first rate is
        measured, then SAMPLE_S."""
        return SAMPLE_S if self._rates else FIRST_SAMPLE_S

    def tick(self, now: float) -> int | None:
        """Close the current interval if it is sample_s() old; return the window to
        switch to, or None to keep the current one (small changes are ignored)."""
        if self._since is None:
            self._since, self._count = now, 0
            return None
        elapsed = now - self._since
        if elapsed < self.sample_s() * 0.9:  # the tuner's sleep may wake a hair early
            return None
        rate = self._count / elapsed
        self._since, self._count = now, 0
        self._rates.append(rate)
        grow = self.want(rate)
        if grow > self.current * GROW:
            return grow
        if len(self._rates) == self._rates.maxlen:
            shrink = self.want(max(self._rates))
            if shrink < self.current * SHRINK:
                return shrink
        return None

    def reset(self) -> None:
        """A new channel starts again at the floor."""
        self.current = self.floor
        self._since, self._count = None, 0
        self._rates.clear()
