"""The lost lane's decisions (brokers/rabbitmq/lost.py): what counts as a loss, and when
a worker may take a lost task (alone)."""

from __future__ import annotations

from ebbtide.brokers.rabbitmq import lost
from ebbtide.brokers.rabbitmq import topology as topo


def test_only_returns_from_the_lost_lane_count_plus_what_a_copy_carries():
    carried = {topo.RECOVERIES_HEADER: 2, topo.DELIVERY_COUNT_HEADER: 3}
    assert lost.recoveries(carried, from_lost_lane=True) == 5
    assert lost.recoveries(carried, from_lost_lane=False) == 2  # the ready lane's count is not ours
    assert lost.recoveries(None, True) == 0
    bogus = {topo.RECOVERIES_HEADER: "7", topo.DELIVERY_COUNT_HEADER: True}
    assert lost.recoveries(bogus, True) == 0


def test_a_copy_carries_the_count_and_drops_rabbitmqs_own_headers():
    headers = {
        "x-ebbtide-ready-ms": 5,
        topo.DELIVERY_COUNT_HEADER: 1,
        "x-death": [],
        "x-first-death-queue": "q",
        topo.RECOVERIES_HEADER: 1,
    }
    assert lost.carried_headers(headers, 3) == {"x-ebbtide-ready-ms": 5, topo.RECOVERIES_HEADER: 3}
    assert lost.carried_headers(headers, 0) == {"x-ebbtide-ready-ms": 5}


def test_the_reason_says_worker_lost_n_times():
    assert lost.lost_reason(4, "hint").startswith("worker lost 4 times")


def test_isolation_holds_back_normal_work_until_nothing_is_held_then_takes_lost_ones():
    iso = lost.Isolation()
    assert iso.due(0.0) and iso.may_take_normal()
    iso.found(0, now=10.0)  # empty lanes: normal work, look again a second later
    assert not iso.due(10.5) and iso.due(10.0 + lost.CHECK_EVERY_S)
    iso.poke()  # a delivery just moved into a lost lane
    assert iso.due(10.5)
    iso.found(2, now=10.5)
    assert not iso.may_take_normal()
    assert not iso.may_fetch(held=1)  # another task still held: wait
    assert iso.may_fetch(held=0) and iso.due(99.0)
    iso.found(0, now=11.0)
    assert iso.may_take_normal() and not iso.may_fetch(held=0)
