"""Write-behind of statuses (status_writer.py): newest wins, no overlap, shared slots."""

from __future__ import annotations

import asyncio

from ebbtide_operator.status_writer import StatusWriter


def test_a_waiting_status_is_superseded_and_writes_never_overlap():
    sent, failed = [], []

    async def scenario():
        gate = asyncio.Event()
        in_flight = [0]

        async def send(status):
            in_flight[0] += 1
            assert in_flight[0] == 1  # one TaskQueue's writes never overlap
            await gate.wait()
            sent.append(status["n"])
            in_flight[0] -= 1

        writer = StatusWriter(asyncio.Semaphore(1), failed.append)
        for n in range(4):  # the first goes out; 1 and 2 are superseded by 3
            writer.submit(send, {"n": n})
            await asyncio.sleep(0)
        assert writer.busy
        gate.set()
        await writer.flush()
        assert not writer.busy

    asyncio.run(scenario())
    assert sent == [0, 3] and failed == []


def test_the_shared_slots_bound_writes_in_flight_and_failures_are_reported():
    peak, failed = [0, 0], []

    async def scenario():
        slots = asyncio.Semaphore(2)

        async def send(status):
            peak[0] += 1
            peak[1] = max(peak[1], peak[0])
            await asyncio.sleep(0.01)
            peak[0] -= 1
            if status["n"] == 3:
                raise RuntimeError("404")

        writers = [StatusWriter(slots, failed.append) for _ in range(6)]
        for n, writer in enumerate(writers):
            writer.submit(send, {"n": n})
        await asyncio.gather(*(w.flush() for w in writers))

    asyncio.run(scenario())
    assert peak[1] == 2 and failed == [{"n": 3}]
