"""The benchmark's verdicts: ratios, PASS/MISS against the issues' targets, medians."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

from report import SystemResult, median_of, render_table, render_targets, targets  # noqa: E402

MIB = 1024 * 1024


def redis_rows(ebbtide_rate: float, ebbtide_bulk: float, ebbtide_rss: int) -> list[SystemResult]:
    return [
        SystemResult("raw", "redis", 100, enqueue_bulk_per_s=60_000),
        SystemResult(
            "dramatiq",
            "redis",
            100,
            processed_per_s=2_000,
            enqueue_single_per_s=5_000,
            peak_rss_bytes=56 * MIB,
        ),
        SystemResult("celery", "redis", 100, processed_per_s=800, peak_rss_bytes=54 * MIB),
        SystemResult(
            "ebbtide",
            "redis",
            100,
            processed_per_s=ebbtide_rate,
            enqueue_bulk_per_s=ebbtide_bulk,
            peak_rss_bytes=ebbtide_rss,
        ),
    ]


def verdicts(rows: list[SystemResult]) -> dict[tuple[str, str], str]:
    return {(t.broker, t.what): t.verdict for t in targets(rows)}


def test_targets_pass_when_every_goal_is_met():
    found = verdicts(redis_rows(6_000, 50_000, 30 * MIB))
    assert set(found.values()) == {"PASS"}
    assert len(found) == 3


def test_targets_miss_just_below_each_goal():
    found = verdicts(redis_rows(5_999, 49_999, 54 * MIB))
    assert found == {
        ("redis", "processed/s vs Dramatiq"): "MISS",
        ("redis", "bulk enqueue vs Dramatiq single send"): "MISS",
        ("redis", "worker RSS vs Celery"): "MISS",
    }


def test_unmeasured_rows_are_na_not_miss():
    rows = [
        SystemResult("dramatiq", "rabbitmq", 10, processed_per_s=2_000),
        SystemResult("ebbtide", "rabbitmq", 10, note="n/a (not yet supported)"),
    ]
    assert verdicts(rows) == {("rabbitmq", "processed/s vs Dramatiq"): "n/a"}
    assert "n/a (not yet supported)" in render_table(rows)


def test_rabbitmq_goal_is_two_and_a_half_times_dramatiq():
    rows = [
        SystemResult("dramatiq", "rabbitmq", 10, processed_per_s=1_000),
        SystemResult("ebbtide", "rabbitmq", 10, processed_per_s=2_500),
    ]
    assert verdicts(rows) == {("rabbitmq", "processed/s vs Dramatiq"): "PASS"}
    rows[1].processed_per_s = 2_499
    assert verdicts(rows) == {("rabbitmq", "processed/s vs Dramatiq"): "MISS"}


def test_two_process_rows_compare_with_each_other():
    rows = [
        *redis_rows(6_000, 50_000, 30 * MIB),
        SystemResult("dramatiq-p2", "redis", 100, processed_per_s=3_000),
        SystemResult("ebbtide-p2", "redis", 100, processed_per_s=7_500),
    ]
    assert verdicts(rows)[("redis", "two processes each vs Dramatiq -p 2")] == "PASS"
    line = next(x for x in render_table(rows).splitlines() if "--processes 2" in x)
    assert "2.50x" in line  # against dramatiq -p 2, not against the one-process row
    rows[-1].processed_per_s = 7_499
    assert verdicts(rows)[("redis", "two processes each vs Dramatiq -p 2")] == "MISS"


def test_table_prints_ratios_to_dramatiq_celery_and_raw():
    text = render_table(redis_rows(5_000, 30_000, 30 * MIB))
    ebbtide_line = next(line for line in text.splitlines() if line.startswith("| ebbtide"))
    assert "2.50x" in ebbtide_line  # vs Dramatiq
    assert "6.25x" in ebbtide_line  # vs Celery
    assert "0.50x" in ebbtide_line  # bulk / raw
    assert "PASS" in render_targets(targets(redis_rows(5_000, 50_000, 1)))


def test_median_of_repeats_keeps_errors():
    runs = [
        SystemResult("ebbtide", "redis", 10, processed_per_s=rate, peak_rss_bytes=rss)
        for rate, rss in ((1.0, 30), (3.0, 10), (2.0, 20))
    ]
    runs.append(SystemResult("ebbtide", "redis", 10, note="timed out"))
    merged = median_of(runs)
    assert merged.processed_per_s == 2.0
    assert merged.peak_rss_bytes == 20
    assert merged.note == "timed out"
    assert merged.runs == 4


def test_async_row_gets_its_own_target_line():
    rows = [
        *redis_rows(3_000, 50_000, 30 * MIB),
        SystemResult("ebbtide-async", "redis", 100, processed_per_s=6_000),
    ]
    found = verdicts(rows)
    assert found[("redis", "processed/s vs Dramatiq")] == "MISS"
    assert found[("redis", "processed/s vs Dramatiq, async def task")] == "PASS"


def test_steady_rate_is_the_tasks_between_the_ten_and_ninety_percent_marks():
    from measure import steady_rate

    assert steady_rate(10_000, {0.1: 0.5, 0.9: 2.5}) == 4_000  # 8,000 tasks in 2 s
    assert steady_rate(10_000, {0.1: 0.5}) is None  # the run never reached 90%
    assert steady_rate(10, {0.1: 1.0, 0.9: 1.0}) is None  # one poll saw both marks


def test_the_table_prints_the_steady_rate_beside_spawn_to_done():
    row = SystemResult("ebbtide", "redis", 100, processed_per_s=3_000, steady_per_s=4_500)
    line = next(x for x in render_table([row]).splitlines() if x.startswith("| ebbtide"))
    assert "3,000" in line and "4,500" in line


def test_pinned_rows_get_verdicts_against_dramatiq_as_it_runs_and_under_taskset():
    rows = [
        *redis_rows(6_000, 50_000, 30 * MIB),  # Dramatiq 2,000/s
        SystemResult("dramatiq-pinned", "redis", 100, processed_per_s=2_500),
        SystemResult("ebbtide-pinned", "redis", 100, processed_per_s=7_000),
        SystemResult("dramatiq-p2", "redis", 100, processed_per_s=3_000),
        SystemResult("ebbtide-pinned-p2", "redis", 100, processed_per_s=7_400),
    ]
    found = verdicts(rows)
    assert found[("redis", "--cpu-affinity vs Dramatiq")] == "PASS"  # 3.5x
    assert found[("redis", "--cpu-affinity vs Dramatiq pinned the same way")] == "MISS"  # 2.8x
    assert found[("redis", "two processes each, --cpu-affinity, vs Dramatiq -p 2")] == "MISS"
    line = next(x for x in render_table(rows).splitlines() if "--processes 2 --cpu" in x)
    assert "2.47x" in line  # against dramatiq -p 2
