"""The fewest `basic.ack` frames for finished deliveries: pure, no I/O.

`basic.ack(tag, multiple=True)` acknowledges every unacked delivery up to `tag` on the
channel. Tasks finish out of order across task threads, so a multiple ack is only
correct up to the oldest delivery that is still unsettled (running, buffered, being
republished). `AckBatcher` tracks one channel's delivery tags in three states:

    unsettled --finish()--> finished (ack owed) --flush()--> acked
        '--------forget()--------> settled by another frame (a nack)

`flush()` turns the finished tags into frames:

* one `(T, multiple=True)` frame for the finished tags older than every unsettled one
  (the contiguous prefix; T is the newest of them), which is safe: no tag below T is
  unsettled, and every tag below T that is not finished was already settled;
* with `everything=True`, one `(t, multiple=False)` frame for each other finished tag.
  The caller holds those back for a few milliseconds first, because the straggler that
  blocks the prefix usually finishes by then and one frame covers them all.

No frame ever covers a delivery whose task has not finished or failed for good, so an
ack still means what it meant with one frame per task (at-least-once).
"""

from __future__ import annotations

from collections.abc import Iterable


class AckBatcher:
    """The delivery tags of ONE channel (a new channel needs a new batcher).

    Every delivery must be registered with `delivered()` as it arrives, and every
    settlement sent by other means (a nack) reported with `forget()` BEFORE that frame
    is sent, so that no later multiple ack covers it."""

    def __init__(self) -> None:
        # Insertion-ordered: tags arrive in increasing order, so the first key is the
        # oldest unsettled delivery. Bounded by the prefetch window.
        self._unsettled: dict[int, None] = {}
        self._finished: set[int] = set()

    @property
    def owed(self) -> int:
        """Finished tags whose ack has not been sent yet."""
        return len(self._finished)

    @property
    def unsettled(self) -> int:
        return len(self._unsettled)

    def delivered(self, tag: int) -> None:
        self._unsettled[tag] = None

    def forget(self, tag: int) -> bool:
        """`tag` is settled by another frame; False if it was not unsettled."""
        self._finished.discard(tag)
        return self._unsettled.pop(tag, 0) is None

    def finish(self, tags: Iterable[int]) -> int:
        """Their tasks finished (or failed for good): an ack is owed. Tags that are not
        unsettled (stale, finished twice, nacked) are ignored; returns how many counted."""
        unsettled, finished = self._unsettled, self._finished
        n = 0
        for tag in tags:
            if tag in unsettled:
                del unsettled[tag]
                finished.add(tag)
                n += 1
        return n

    def flush(self, everything: bool = False) -> list[tuple[int, bool]]:
        """The frames `(delivery_tag, multiple)` to send now, in order: the contiguous
        finished prefix as one frame, and with `everything` the rest one by one."""
        finished = self._finished
        if not finished:
            return []
        oldest = next(iter(self._unsettled), None)
        if oldest is None:
            below = sorted(finished)
            finished.clear()
        else:
            below = sorted(t for t in finished if t < oldest)
            finished.difference_update(below)
        out: list[tuple[int, bool]] = []
        if below:
            out.append((below[-1], len(below) > 1))
        if everything and finished:
            out.extend((t, False) for t in sorted(finished))
            finished.clear()
        return out

    def frames(self, tags: Iterable[int]) -> list[tuple[int, bool]]:
        """finish(tags) and flush everything owed at once."""
        self.finish(tags)
        return self.flush(everything=True)
