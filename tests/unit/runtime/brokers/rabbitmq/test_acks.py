"""AckBatcher: the fewest ack frames, and never one that covers an unfinished delivery.

The property test replays random deliveries, completions in any order, nacks and flushes
against a model of RabbitMQ's unacked set, which rejects (closes the channel on) an ack
for an unknown tag exactly as the broker does."""

from __future__ import annotations

from ebbtide.brokers.rabbitmq.acks import AckBatcher
from hypothesis import given, settings
from hypothesis import strategies as st


def batcher(n: int) -> AckBatcher:
    b = AckBatcher()
    for tag in range(1, n + 1):
        b.delivered(tag)
    return b


def test_in_order_completions_become_one_multiple_ack():
    b = batcher(5)
    assert b.frames([1, 2, 3]) == [(3, True)]
    assert b.frames([4]) == [(4, False)]  # a single tag needs no `multiple`
    assert b.unsettled == 1 and b.owed == 0


def test_acks_above_a_running_delivery_are_held_until_it_finishes():
    b = batcher(5)
    assert b.finish([2, 3, 5]) == 3
    assert b.flush() == []  # 1 still runs: no multiple ack may cover it
    assert b.owed == 3
    b.finish([1])
    assert b.flush() == [(3, True)]  # 1..3 in one frame; 5 waits for 4
    assert b.owed == 1
    assert b.flush(everything=True) == [(5, False)]  # the timer: send the rest singly
    assert b.owed == 0 and b.unsettled == 1


def test_everything_sends_the_prefix_first_then_single_acks():
    b = batcher(6)
    assert b.frames([1, 2, 4, 6]) == [(2, True), (4, False), (6, False)]


def test_out_of_order_batch_in_one_call():
    b = batcher(4)
    assert b.frames([4, 2, 3, 1]) == [(4, True)]


def test_stale_duplicate_and_unknown_tags_are_ignored():
    b = batcher(3)
    assert b.frames([1]) == [(1, False)]
    assert b.frames([1, 99]) == []  # acking twice would close the channel
    assert b.finish([1, 99]) == 0


def test_a_nacked_tag_is_never_covered_and_never_blocks():
    b = batcher(4)
    assert b.forget(2) is True  # nacked (requeued) by the caller
    assert b.forget(2) is False
    assert b.frames([1, 3, 4]) == [(4, True)]  # 2 is gone from the broker's unacked set
    b = batcher(3)
    b.finish([2])
    b.forget(2)  # finished, then handed back instead (a failed republish): not owed
    assert b.owed == 0 and b.frames([1, 3]) == [(3, True)]


def apply(frames, broker: set[int]) -> set[int]:
    """RabbitMQ's side: the tags each frame acknowledges (an unknown tag is a channel
    error, PRECONDITION_FAILED)."""
    acked: set[int] = set()
    for tag, multiple in frames:
        assert tag in broker, f"ack for unknown delivery tag {tag}"
        covered = {t for t in broker if t <= tag} if multiple else {tag}
        broker -= covered
        acked |= covered
    return acked


ops = st.lists(
    st.tuples(
        st.sampled_from(["deliver", "finish", "nack", "flush", "flush_all"]),
        st.integers(0, 30),
    ),
    max_size=120,
)


@settings(max_examples=400, deadline=None)
@given(ops)
def test_frames_ack_exactly_the_finished_deliveries(script):
    b = AckBatcher()
    broker: set[int] = set()  # unacked on the broker
    running: list[int] = []  # delivered, task not finished
    finished: set[int] = set()  # task finished, not acked yet
    next_tag = 1
    for op, arg in script:
        if op == "deliver":
            for _ in range(arg % 5 + 1):
                b.delivered(next_tag)
                broker.add(next_tag)
                running.append(next_tag)
                next_tag += 1
        elif op == "finish" and running:
            tag = running.pop(arg % len(running))  # completions in any order
            assert b.finish([tag, tag]) == 1
            finished.add(tag)
        elif op == "nack" and running:
            tag = running.pop(arg % len(running))
            assert b.forget(tag)
            broker.discard(tag)  # the nack frame, sent after forget()
        elif op in ("flush", "flush_all"):
            acked = apply(b.flush(everything=op == "flush_all"), broker)
            assert acked <= finished, "an ack covered a delivery whose task had not finished"
            finished -= acked
            if op == "flush_all":
                assert not finished
        assert b.owed == len(finished)
        assert b.unsettled == len(running)
    finished -= apply(b.flush(everything=True), broker)
    assert not finished
    assert broker == set(running)  # nothing else is unacked, nothing was acked twice
