"""The one WorkerInfo parser both brokers' statistics use."""

from __future__ import annotations

from ebbtide.stats import worker_info


def test_worker_info_reads_a_heartbeat_and_refuses_foreign_ones():
    info = worker_info({"worker_id": 7, "running": 0, "at": "12.5"}, now=1.0)
    assert info is not None
    assert (info.worker_id, info.busy, info.pod, info.last_seen) == ("7", False, None, 12.5)
    assert worker_info({"worker_id": "w"}, now=3.0).last_seen == 3.0  # type: ignore[union-attr]
    for bad in ({}, {"worker_id": "w", "running": "x"}, {"worker_id": "w", "queues": 5}):
        assert worker_info(bad, now=0.0) is None
