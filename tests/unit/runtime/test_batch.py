"""The batch's bookkeeping (ebbtide/batch.py): which tasks an exit reports as not stored,
for each way a broker's enqueue can end. The broker here is a stand-in for its replies;
the round trips themselves are tested in tests/integration/test_batch.py."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from ebbtide.batch import Batch
from ebbtide.brokers.base import Outgoing
from ebbtide.errors import BatchNotStored, PartiallyEnqueued


def out(task_id: str) -> Outgoing:
    return Outgoing(task_id, 0, 0, "", "{}")


class Replies:
    """enqueue() answers from a script: per queue, a reply list or an exception."""

    def __init__(self, script: dict[str, list[str] | BaseException]) -> None:
        self.script, self.calls = script, []

    def enqueue(self, queue: str, messages: Sequence[Outgoing], *_: int) -> list[str]:
        self.calls.append((queue, [m.task_id for m in messages]))
        answer = self.script[queue]
        if isinstance(answer, BaseException):
            raise answer
        return answer


def batch_of(**queues: list[str]) -> Batch:
    batch = Batch()
    for queue, ids in queues.items():
        batch.add(queue, 0, f"task-{queue}", [out(i) for i in ids])
    return batch


def test_one_enqueue_per_queue_and_every_id_back():
    broker = Replies({"a": ["1", "2"], "b": ["3"]})
    assert batch_of(a=["1", "2"], b=["3"]).flush(lambda: broker, 0) == ["1", "2", "3"]
    assert broker.calls == [("a", ["1", "2"]), ("b", ["3"])]


def test_a_failed_queue_is_named_and_the_others_are_stored():
    down = ConnectionError("refused")
    broker = Replies({"a": ["1"], "b": down})
    with pytest.raises(BatchNotStored) as info:
        batch_of(a=["1"], b=["2", "3"]).flush(lambda: broker, 0)
    assert info.value.stored == ["1"]
    assert info.value.not_stored == [("2", "task-b"), ("3", "task-b")]
    assert info.value.__cause__ is down


def test_a_partial_enqueue_reports_only_the_unstored_part():
    partial = PartiallyEnqueued("a", ["1", "3"], 3, MemoryError("OOM"))
    with pytest.raises(BatchNotStored) as info:
        batch_of(a=["1", "2", "3"]).flush(lambda: Replies({"a": partial}), 0)
    assert (info.value.stored, info.value.not_stored) == (["1", "3"], [("2", "task-a")])


def test_a_full_queue_names_the_refused_tasks():
    with pytest.raises(BatchNotStored, match="1 of 2 tasks") as info:
        batch_of(a=["1", "2"]).flush(lambda: Replies({"a": ["1", "!full"]}), 0)
    assert info.value.not_stored == [("2", "task-a")]
