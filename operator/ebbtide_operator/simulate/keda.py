"""A KEDA-style baseline: the Redis list scaler driving a HorizontalPodAutoscaler.

It follows KEDA's and the HPA's documented behaviour (docs/scaling-policy.md cites each):
- KEDA polls every `polling_interval` (30 s) and only handles 0 <-> 1: it activates
  when LLEN > activationListLength (0) and scales to zero `cooldown_period` (300 s)
  after the trigger was last active;
- with replicas >= 1 the HPA syncs every 15 s on the External metric LLEN with an
  AverageValue target `list_length` per pod:
  ratio = LLEN / (list_length * current); within 0.1 of 1 nothing changes, otherwise
  desired = ceil(LLEN / list_length), floored at the HPA's minReplicas (>= 1);
- scale-up is limited to max(+100 %, +4 pods) per 15 s, scale-down takes the highest
  recommendation of the last 300 s (the HPA's default behavior).

The metric is the list length only, as KEDA's Redis scaler reads it: tasks in flight and
the age of the oldest task are invisible to it.
"""

from __future__ import annotations

import math

from ebbtide_operator.policy import Observation, ScalingSpec


def _next_tick(scheduled: float, now: float, period: float) -> float:
    """The first tick of a fixed `period` grid after `now`."""
    return scheduled + period * (math.floor((now - scheduled) / period) + 1)


class KedaPolicy:
    """A stateful callable `policy(obs, spec) -> int`, called every simulator poll; it
    acts only on its own ticks: the HPA every 15 s (first, as it cannot see a scale-from-
    zero happening in the same instant), then KEDA every 30 s."""

    def __init__(
        self,
        list_length: float,
        activation_list_length: float = 0.0,
        polling_interval: float = 30.0,
        hpa_sync: float = 15.0,
        tolerance: float = 0.1,
        stabilization: float = 300.0,
        cooldown_period: float = 300.0,
        scale_up_percent: float = 100.0,
        scale_up_pods: int = 4,
    ) -> None:
        if list_length <= 0:
            raise ValueError(f"list_length must be > 0, got {list_length}")
        self.list_length = list_length
        self.activation_list_length = activation_list_length
        self.polling_interval = polling_interval
        self.hpa_sync = hpa_sync
        self.tolerance = tolerance
        self.stabilization = stabilization
        self.cooldown_period = cooldown_period
        self.scale_up_percent = scale_up_percent
        self.scale_up_pods = scale_up_pods
        self.next_poll: float | None = None
        self.next_sync: float | None = None
        self.last_active: float | None = None
        self.recommendations: list[tuple[float, int]] = []
        self.desired: int | None = None

    @classmethod
    def tuned(cls, spec: ScalingSpec, per_pod_rate: float, **kw) -> KedaPolicy:
        """listLength = target x per-pod rate: at the target, the backlog per pod drains
        in exactly the target time (the fair translation of a wait target to LLEN)."""
        return cls(list_length=max(spec.target_backlog_seconds * per_pod_rate, 1e-9), **kw)

    def __call__(self, obs: Observation, spec: ScalingSpec) -> int:
        now, length = obs.now, obs.backlog
        current = obs.replicas if self.desired is None else self.desired
        if self.next_poll is None:
            self.next_poll = self.next_sync = now
        hpa_min = max(spec.min_replicas, 1)

        if now >= self.next_sync:  # the HPA's sync loop; it is idle while replicas are 0
            self.next_sync = _next_tick(self.next_sync, now, self.hpa_sync)
            if current > 0:
                current = self._hpa(now, length, current, hpa_min, spec.max_replicas)

        if now >= self.next_poll:  # KEDA's own loop: activation and cooldown
            self.next_poll = _next_tick(self.next_poll, now, self.polling_interval)
            active = length > self.activation_list_length
            if active:
                self.last_active = now
                if current == 0:
                    current = hpa_min
            elif (
                current > 0
                and spec.min_replicas == 0
                and (self.last_active is None or now - self.last_active >= self.cooldown_period)
            ):
                current = 0
                self.recommendations.clear()
        self.desired = max(spec.min_replicas, min(spec.max_replicas, current))
        return self.desired

    def _hpa(self, now: float, length: int, current: int, lo: int, hi: int) -> int:
        ratio = length / (self.list_length * current)
        if abs(ratio - 1.0) <= self.tolerance:
            raw = current
        else:
            raw = math.ceil(length / self.list_length)
        raw = max(lo, min(hi, raw))
        self.recommendations = [
            (t, r) for t, r in self.recommendations if now - t < self.stabilization
        ]
        self.recommendations.append((now, raw))
        if raw > current:
            limit = max(
                math.floor(current * (1 + self.scale_up_percent / 100.0)),
                current + self.scale_up_pods,
            )
            return min(raw, limit)
        return min(current, max(r for _, r in self.recommendations))
