"""How many routine status writes the operator sends the API server per second.

A status write whose only changes are figures (backlog, oldest age, rates, drain) or the
policy's memory is *routine*: at 1,000 TaskQueues on a 5 s poll, writing each one every
poll is up to 200 PATCHes a second, which saturates an API server on a small control
plane and, through it, makes every tick (and every scale-up) late. Routine writes share
one token bucket per operator (EBBTIDE_STATUS_WRITES_PER_SECOND, default 20); one that
finds it empty waits for a later poll, but never beyond ROUTINE_MAX_AGE_SECONDS, so no
status is staler than that. Changes someone acts on (conditions, replicas, desired
replicas, observedGeneration, the last scale) are never held back, nor a first write.
The Prometheus metrics are updated on every tick regardless.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from ebbtide_operator.status import POLICY_STATE_REFRESH_SECONDS

DEFAULT_PER_SECOND = 20.0
# The policy's memory is persisted at least this often anyway (status.needs_write), so a
# failover never loses more of it than it already could.
ROUTINE_MAX_AGE_SECONDS = POLICY_STATE_REFRESH_SECONDS
# What a write may defer: the figures `kubectl get tq` shows, and the policy state.
ROUTINE_KEYS = frozenset(
    {
        "backlog",
        "inFlight",
        "oldestAgeSeconds",
        "oldestAge",
        "arrivalRate",
        "serviceRate",
        "drainSeconds",
        "drain",
        "policyState",
        "podStartupSeconds",
    }
)


def routine_only(last: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """True when `new` differs from `last` in routine fields only."""
    return all(last.get(key) == new.get(key) for key in (set(last) | set(new)) - ROUTINE_KEYS)


def per_second_from_env(environ: Mapping[str, str]) -> float | None:
    """EBBTIDE_STATUS_WRITES_PER_SECOND: a positive rate, or 0 for no limit (None)."""
    raw = environ.get("EBBTIDE_STATUS_WRITES_PER_SECOND", "")
    if not raw:
        return DEFAULT_PER_SECOND
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(
            f"EBBTIDE_STATUS_WRITES_PER_SECOND must be writes per second >= 0 (0: no limit), "
            f"got {raw!r}"
        )
    return value or None


class WriteBudget:
    """A token bucket for routine status writes, shared by every TaskQueue's tick. All
    calls come from the event loop: no lock."""

    def __init__(
        self, per_second: float | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """`per_second` None: no limit (every wanted write goes out, as in tests)."""
        self.per_second = per_second
        self.capacity = max(1.0, per_second or 0.0)  # one second's worth of writes
        self._tokens = self.capacity
        self._clock = clock
        self._at = clock()
        self.deferred = 0  # routine writes put off (a metric for the bench)

    def _take(self) -> bool:
        assert self.per_second is not None
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.per_second)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.deferred += 1
        return False

    def allow(
        self,
        last: Mapping[str, Any] | None,
        new: Mapping[str, Any],
        now: float,
        last_write_at: float | None,
    ) -> bool:
        """Whether a status write that status.needs_write asked for goes out now (`now`
        and `last_write_at` on the tick's clock)."""
        if self.per_second is None or last is None or last_write_at is None:
            return True
        if not routine_only(last, new):
            return True
        if now - last_write_at >= ROUTINE_MAX_AGE_SECONDS:
            return True
        return self._take()
