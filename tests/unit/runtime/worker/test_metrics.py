"""The worker's metric names and labels, as Prometheus scrapes them."""

from __future__ import annotations

import platform

from ebbtide.buildinfo import version
from ebbtide.lifecycle import Outcome
from ebbtide.worker.metrics import Metrics
from prometheus_client.parser import text_string_to_metric_families


def test_outcomes_are_counted_under_their_names_and_retries_on_their_own():
    m = Metrics()
    m.watch(lambda: 2, lambda: 5, lambda: 3)
    m.finished("t", "success", 0.01)
    m.finished("t", Outcome.RETRY.value, 0.02)
    m.finished("t", Outcome.DEAD.value, None)
    m.started("q", 0.5)
    m.stale(2, 1)
    text = m.render().decode()
    for line in (
        'ebbtide_worker_tasks_total{outcome="success",task="t"} 1.0',
        'ebbtide_worker_tasks_total{outcome="retry",task="t"} 1.0',
        'ebbtide_worker_tasks_total{outcome="dead",task="t"} 1.0',
        'ebbtide_worker_retries_total{task="t"} 1.0',
        'ebbtide_worker_task_duration_seconds_count{task="t"} 2.0',
        'ebbtide_worker_enqueue_to_start_seconds_count{queue="q"} 1.0',
        "ebbtide_worker_running_tasks 2.0",
        "ebbtide_worker_held_tasks 5.0",
        "ebbtide_worker_thread_limit 3.0",
        "ebbtide_worker_stale_settlements_total 2.0",
        "ebbtide_worker_leases_lost_total 1.0",
    ):
        assert line in text, line


def test_every_ebbtide_series_but_build_info_is_in_the_worker_subsystem():
    families = list(text_string_to_metric_families(Metrics().render().decode()))
    ours = {f.name for f in families if f.name.startswith("ebbtide_")}
    assert ours - {"ebbtide_build_info"}, ours
    assert all(n.startswith("ebbtide_worker_") for n in ours - {"ebbtide_build_info"}), ours
    for f in families:
        if f.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in f.samples), f.name


def test_build_info_and_process_metrics_are_exported():
    families = {f.name: f for f in text_string_to_metric_families(Metrics().render().decode())}
    (sample,) = families["ebbtide_build_info"].samples
    assert sample.value == 1
    assert sample.labels == {
        "component": "worker",
        "version": version(),
        "python_version": platform.python_version(),
    }
    assert version() != "unknown"  # the venv installs ebbtide
    for name in ("process_resident_memory_bytes", "process_cpu_seconds", "python_info"):
        assert name in families, sorted(families)
