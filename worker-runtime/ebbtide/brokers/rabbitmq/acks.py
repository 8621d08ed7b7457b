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

`AckSender` adds the timing (when the owed acks go out) on the event loop; the frames
themselves are written by whoever owns the channel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

ACK_HOLD_S = 0.005  # a finished task's ack waits about this long to join a batch
ACK_MAX_WAIT_S = 0.025  # ... and an ack above a still-running delivery at most this long
ACK_BATCH_MAX = 128  # a batch goes out when this many (at most a quarter window) are owed

Frames = list[tuple[int, bool]]


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


def batch_size(window: int) -> int:
    """Owed acks that make a batch go out at once: a quarter of the prefetch window."""
    return max(1, min(ACK_BATCH_MAX, window // 4))


class AckSender:
    """Owes acks for finished tasks and sends them in batches, on the event loop.

    The contiguous finished prefix goes out as one multiple ack once `batch_size` acks
    are owed, or ACK_HOLD_S after the first one. Acks above a still-running delivery
    wait for it (it usually finishes within milliseconds and one frame then covers them
    all), at most ACK_MAX_WAIT_S or until another batch is owed; then they go out one
    frame each. `write(frames)` sends the frames when `connected()`. Used on the event
    loop only (its timers are the running loop's)."""

    def __init__(
        self,
        write: Callable[[Frames], None],
        connected: Callable[[], bool],
        batch: Callable[[], int],
    ) -> None:
        self._write, self._connected, self._batch = write, connected, batch
        self.batcher = AckBatcher()
        self._timer: asyncio.TimerHandle | None = None
        self._owed_since: float | None = None

    def reset(self) -> None:
        """A new channel: acks owed on the old one are void (it requeued them)."""
        self.batcher = AckBatcher()
        self._cancel_timer()
        self._owed_since = None

    def delivered(self, tag: int) -> None:
        self.batcher.delivered(tag)

    def forget(self, tag: int) -> bool:
        """`tag` is settled by another frame (a nack), which the caller sends next."""
        return self.batcher.forget(tag)

    def finish(self, tags: Iterable[int]) -> None:
        """These deliveries' tasks are done: owe their acks and send them soon."""
        acks = self.batcher
        if not acks.finish(tags):
            return
        loop = asyncio.get_running_loop()
        if self._owed_since is None:
            self._owed_since = loop.time()
        batch = self._batch()
        if acks.owed >= batch:
            self._flush(everything=False)
            if acks.owed >= batch:
                self._flush(everything=True)
        if acks.owed and self._timer is None:
            self._timer = loop.call_later(ACK_HOLD_S, self._on_timer)

    def flush(self) -> None:
        """Send every ack owed now (the worker is stopping)."""
        self._cancel_timer()
        self._flush(everything=True)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        since = self._owed_since
        if not self.batcher.owed or since is None:  # a full batch went out meanwhile
            self._owed_since = None
            return
        loop = asyncio.get_running_loop()
        self._flush(everything=loop.time() - since >= ACK_MAX_WAIT_S)
        if self.batcher.owed:
            self._timer = loop.call_later(ACK_HOLD_S, self._on_timer)

    def _flush(self, everything: bool) -> None:
        if self._connected():
            frames = self.batcher.flush(everything)
            if frames:
                self._write(frames)
        if not self.batcher.owed:
            self._owed_since = None
