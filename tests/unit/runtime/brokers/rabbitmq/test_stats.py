"""BrokerStats assembled from the management API's queue list and worker heartbeats."""

from __future__ import annotations

from ebbtide.brokers.rabbitmq.stats import (
    build_stats,
    build_stats_without_management,
    parse_workers,
)


def test_stats_from_the_management_list_and_heartbeats():
    now = 1000.0
    listing = [
        {
            "name": "ebbtide.q",
            "messages_ready": 5,
            "messages_unacknowledged": 2,
            "head_message_timestamp": 990,
            "message_stats": {"ack": 40},
        },
        {"name": "ebbtide.q.delay.1300", "messages_ready": 3, "messages_unacknowledged": 0},
        {"name": "ebbtide.q.delay.500", "messages_ready": 1},
        {"name": "ebbtide.q.dead", "messages_ready": 4},
        {"name": "ebbtide.worker.w1", "messages_ready": 1},
        {"name": "other", "messages_ready": 100},
    ]
    beats = parse_workers(
        [
            b'{"worker_id":"w1","running":2,"concurrency":8,"queues":["q"],"at":999,'
            b'"busy_us":{"q":2500000}}',
            b'{"worker_id":"old","running":0,"at":100}',
            b"not json",
        ],
        now,
        ttl_s=90,
    )
    stats = build_stats("ebbtide", now, listing, beats, None)
    q = stats.queues["q"]
    assert (q.ready, q.in_flight, q.delayed, q.dead) == (5, 2, 4, 4)
    assert (q.completed_total, q.enqueued_total) == (40, 40 + 5 + 2 + 4)
    assert q.busy_seconds_total == 2.5 and stats.oldest_age_s("q") == 10
    assert [w.worker_id for w in stats.workers] == ["w1"] and stats.workers[0].busy
    assert set(stats.queues) == {"q"}
    assert build_stats("ebbtide", now, listing, beats, ["never"]).queues["never"].ready == 0


def test_stats_without_management_use_depths_and_heartbeats():
    beats = [{"worker_id": "w", "at": 1, "completed": {"q": 7}, "held_by_queue": {"q": 2}}]
    q = build_stats_without_management(1.0, {"q": 3}, beats).queues["q"]
    assert (q.ready, q.in_flight, q.completed_total, q.enqueued_total) == (3, 2, 7, 12)
    assert q.oldest_ready_at is None


def test_the_lost_lane_counts_as_ready_work_and_the_wait_queues_as_delayed():
    listing = [
        {"name": "ebbtide.q", "messages_ready": 0, "message_stats": {"ack": 10}},
        {
            "name": "ebbtide.q.lost",
            "messages_ready": 3,
            "messages_unacknowledged": 1,
            "head_message_timestamp": 995,
            "message_stats": {"ack": 2},
        },
        {"name": "ebbtide.q.wait.1300", "messages_ready": 2},
        {"name": "ebbtide.q.dead", "messages_ready": 1},
    ]
    q = build_stats("ebbtide", 1000.0, listing, [], None).queues["q"]
    assert (q.ready, q.in_flight, q.delayed, q.dead) == (3, 1, 2, 1)
    assert q.completed_total == 12 and q.oldest_ready_at == 995.0
