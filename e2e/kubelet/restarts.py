"""Restart policy and crash-loop backoff, as pure decisions.

Like the kubelet: the first restart is immediate, then each one waits twice as long as the
one before (base, 2*base, 4*base, ...) up to a cap; a container that ran for at least
`2 * cap` before exiting starts over from an immediate restart. The real kubelet's base is
10 s (cap 5 min); this one defaults to a 1 s base so tests do not wait (`--backoff-base`).
"""

from __future__ import annotations

from dataclasses import dataclass


def should_restart(policy: str, exit_code: int, forced: bool = False) -> bool:
    """Whether an exited container runs again: Always, OnFailure on a non-zero exit, never
    for Never. `forced` (a failed liveness/startup probe killed it) restarts unless Never."""
    if policy == "Never":
        return False
    if policy == "OnFailure":
        return forced or exit_code != 0
    return True


@dataclass(frozen=True)
class Backoff:
    base: float = 1.0
    cap: float = 300.0

    def delay(self, step: int) -> float:
        """The wait before a restart that follows `step` earlier consecutive restarts."""
        if step <= 0:
            return 0.0
        return min(self.cap, self.base * 2 ** (step - 1))

    def after_exit(self, step: int, ran_seconds: float) -> tuple[float, int]:
        """(wait before restarting, the new step) for a container that ran `ran_seconds`:
        a run of at least `2 * cap` resets the backoff."""
        if ran_seconds >= 2 * self.cap:
            step = 0
        return self.delay(step), step + 1
