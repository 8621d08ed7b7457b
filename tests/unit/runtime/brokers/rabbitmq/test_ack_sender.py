"""When owed acks go out: at once for a full batch, after a short hold otherwise."""

from __future__ import annotations

import asyncio
import time

from ebbtide.brokers.rabbitmq.acks import ACK_BATCH_MAX, AckSender, batch_size


def test_batch_size_is_a_quarter_window_within_bounds():
    assert [batch_size(w) for w in (0, 3, 16, 4096)] == [1, 1, 4, ACK_BATCH_MAX]


def test_a_full_batch_goes_out_at_once_and_a_short_one_after_the_hold():
    async def main():
        sent: list[list[tuple[int, bool]]] = []
        acks = AckSender(sent.append, lambda: True, lambda: 4)
        for tag in range(1, 7):
            acks.delivered(tag)
        acks.finish([1, 2, 3, 4])
        assert sent == [[(4, True)]]  # a batch: one multiple frame, no wait
        acks.finish([6])  # above the still-running 5: held back
        assert len(sent) == 1
        deadline = time.monotonic() + 5
        while len(sent) < 2:  # after ACK_MAX_WAIT_S it goes out on its own
            assert time.monotonic() < deadline
            await asyncio.sleep(0.001)
        assert sent[1] == [(6, False)]

    asyncio.run(main())


def test_nothing_is_written_while_disconnected_and_a_new_channel_voids_the_debt():
    async def main():
        sent: list[list[tuple[int, bool]]] = []
        up = False
        acks = AckSender(sent.append, lambda: up, lambda: 1)
        acks.delivered(1)
        acks.finish([1])
        assert sent == [] and acks.batcher.owed == 1
        acks.reset()
        assert acks.batcher.owed == 0
        up = True
        acks.delivered(1)
        acks.finish([1])
        assert sent == [[(1, False)]]
        acks.flush()

    asyncio.run(main())
