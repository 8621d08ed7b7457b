"""The worker's metric names and labels, as Prometheus scrapes them."""

from __future__ import annotations

from ebbtide.lifecycle import Outcome
from ebbtide.worker.metrics import Metrics


def test_outcomes_are_counted_under_their_names_and_retries_on_their_own():
    m = Metrics()
    m.watch(lambda: 2, lambda: 5)
    m.finished("t", "success", 0.01)
    m.finished("t", Outcome.RETRY.value, 0.02)
    m.finished("t", Outcome.DEAD.value, None)
    m.started("q", 0.5)
    text = m.render().decode()
    for line in (
        'ebbtide_tasks_total{outcome="success",task="t"} 1.0',
        'ebbtide_tasks_total{outcome="retry",task="t"} 1.0',
        'ebbtide_tasks_total{outcome="dead",task="t"} 1.0',
        'ebbtide_retries_total{task="t"} 1.0',
        'ebbtide_task_duration_seconds_count{task="t"} 2.0',
        'ebbtide_enqueue_to_start_seconds_count{queue="q"} 1.0',
        "ebbtide_in_flight 2.0",
        "ebbtide_held 5.0",
    ):
        assert line in text, line
