"""Per-stream bounded queues with a named drop policy, and size-or-deadline batching across them."""

from __future__ import annotations

import dataclasses
import enum
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from fpnstream.core.frames import Frame


class DropPolicy(enum.Enum):
    BLOCK = "block"  # files: never lose a frame, slow the decoder down instead
    DROP_OLDEST = "drop_oldest"  # live: stay fresh, count what was thrown away


@dataclass
class _StreamQueue:
    capacity: int
    policy: DropPolicy
    space: threading.Condition  # its blocked producer waits here (shares the mux's lock)
    lease: str = ""  # the claim whose frames it takes (Frame.lease)
    items: deque[tuple[Frame, float]] = field(default_factory=deque)
    closed: bool = False
    # A reconnect's `gap` mark rides on one frame; if that frame is dropped, the mark moves
    # on to the stream's next frame taken, or consumers never learn that frames were missed.
    gap_owed: bool = False

    def discard_oldest(self) -> None:
        frame, _ = self.items.popleft()
        self.gap_owed = self.gap_owed or frame.gap

    def take(self) -> tuple[Frame, float]:
        frame, queued_at = self.items.popleft()
        if self.gap_owed:
            self.gap_owed = False
            frame = dataclasses.replace(frame, gap=True)
        return frame, queued_at


@dataclass(frozen=True, slots=True)
class Batch:
    frames: list[Frame]
    waits: list[float]  # seconds each frame spent queued before its batch closed


DropHook = Callable[[str, str, int], None]  # (stream_id, reason, frames)


class FrameMux:
    """Holds one bounded queue per stream; `take_batch` drains them round-robin.

    Round-robin keeps a busy stream from filling every batch, and the deadline starts at the
    batch's first frame, so a silent stream never holds a batch back.
    """

    def __init__(
        self,
        on_drop: DropHook | None = None,
        clock: Callable[[], float] = time.monotonic,
        keep_open: bool = False,
        stale_after_s: float | Callable[[], float] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        # keep_open: streams may be added later, so running out of streams is not the end.
        self._keep_open = keep_open
        # Live frames older than this (seconds, or a callable giving the current limit) are
        # skipped when a batch is formed, so under overload batch slots go to fresh frames of
        # every stream instead of to frames that would be thrown away at inference anyway.
        self._stale_after_s = stale_after_s
        self._wall_clock = wall_clock
        self._queues: dict[str, _StreamQueue] = {}
        # One lock; the batcher waits on `_cond`, each stream's producer on its queue's
        # `space`, so a frame put wakes the batcher only, and a frame taken wakes only the
        # producer of that stream (not every decoder thread on every frame).
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._on_drop = on_drop or (lambda stream, reason, n: None)
        self._clock = clock
        self._rr = 0
        self._shutdown = False
        self._queued = 0  # frames in all queues
        # Frames the waiting batcher needs before it can do anything (0: it is not waiting):
        # a put wakes it only then, not on every frame (a wake-up costs a thread switch and a
        # scan of every queue, per frame, on the host's busiest lock).
        self._need = 0

    def add_stream(self, stream_id: str, capacity: int, policy: DropPolicy, lease: str = "") -> None:
        """`lease`: the claim whose frames the queue takes; frames of another (an earlier
        claim of the stream on this worker) are refused. A closed queue of that earlier
        claim is replaced: its frames would be fenced off at publish anyway."""
        with self._cond:
            old = self._queues.get(stream_id)
            if old is not None and not old.closed:
                raise ValueError(f"stream {stream_id!r} is already open")
            if old is not None:
                self._queued -= len(old.items)
            self._queues[stream_id] = _StreamQueue(capacity, policy, threading.Condition(self._lock), lease)

    def put(self, frame: Frame) -> bool:
        """Enqueue a frame; False if its stream was closed or the mux shut down (not accepted)."""
        with self._cond:
            q = self._queues.get(frame.stream_id)
            if q is None or q.closed or frame.lease != q.lease:
                return False
            if q.policy is DropPolicy.BLOCK:
                while len(q.items) >= q.capacity and not q.closed:
                    q.space.wait()
                if q.closed:
                    return False
            elif len(q.items) >= q.capacity:
                q.discard_oldest()
                self._queued -= 1
                self._on_drop(frame.stream_id, "queue_full", 1)
            q.items.append((frame, self._clock()))
            self._queued += 1
            if self._need and self._queued >= self._need:
                self._cond.notify()
            return True

    def close_stream(self, stream_id: str) -> None:
        """No more frames will come; what is queued is still handed out."""
        with self._cond:
            if stream_id in self._queues:
                self._queues[stream_id].closed = True
                self._queues[stream_id].space.notify_all()
            self._cond.notify_all()

    def seal(self) -> None:
        """No new streams will come: once every stream is closed and drained, batching ends."""
        with self._cond:
            self._keep_open = False
            self._cond.notify_all()

    def shutdown(self) -> None:
        """Wake everyone; blocked producers give up. Queued frames can still be taken."""
        with self._cond:
            self._shutdown = True
            for q in self._queues.values():
                q.closed = True
                q.space.notify_all()
            self._cond.notify_all()

    def _wake_producers(self) -> None:
        for q in self._queues.values():
            if q.policy is DropPolicy.BLOCK and len(q.items) < q.capacity:
                q.space.notify()

    def depths(self) -> dict[str, int]:
        with self._cond:
            return {sid: len(q.items) for sid, q in self._queues.items()}

    def _finished(self) -> bool:
        if self._has_frames():
            return False
        if self._shutdown:
            return True
        return not self._keep_open and all(q.closed for q in self._queues.values())

    def _has_frames(self) -> bool:
        return self._queued > 0

    def _skip_stale(self) -> None:
        if self._stale_after_s is None:
            return
        limit = self._stale_after_s() if callable(self._stale_after_s) else self._stale_after_s
        cutoff = self._wall_clock() - limit
        for sid, q in self._queues.items():
            if q.policy is DropPolicy.DROP_OLDEST:
                while q.items and q.items[0][0].capture_ts < cutoff:
                    q.discard_oldest()
                    self._queued -= 1
                    self._on_drop(sid, "stale", 1)

    def _skip_behind(self, limit: int) -> None:
        """Newest first under overload: a live stream holding more frames than its share of
        this batch is behind; its oldest frames are skipped (reason `behind`) so the batch
        gets its newest ones, instead of frames that aged in the queue while the detector was
        busy. A detector that keeps up sees at most a share queued and skips nothing."""
        busy = [q for q in self._queues.values() if q.items]
        # Rounded up: with 4 slots and 3 cameras each keeps 2, and the round-robin pointer
        # gives the spare slot to each in turn (rounded down, the spare slot went to
        # whichever camera's next frame arrived first, every time).
        share = max(1, -(-limit // max(len(busy), 1)))
        for sid, q in self._queues.items():
            if q.policy is DropPolicy.DROP_OLDEST and len(q.items) > share:
                excess = len(q.items) - share
                for _ in range(excess):
                    q.discard_oldest()
                self._queued -= excess
                self._on_drop(sid, "behind", excess)

    def _take_round_robin(self, out: list[tuple[Frame, float]], limit: int) -> None:
        self._skip_stale()
        if not out:  # only when a batch opens: frames that arrive while it fills are fresh
            self._skip_behind(limit)
        ids = list(self._queues)
        while len(out) < limit and self._has_frames():
            for k in range(len(ids)):
                q = self._queues[ids[(self._rr + k) % len(ids)]]
                if q.items:
                    out.append(q.take())
                    self._queued -= 1
                    if len(out) >= limit:
                        break
            self._rr = (self._rr + 1) % max(len(ids), 1)
        # Drop fully drained closed queues so runtime-added streams don't accumulate.
        for sid in [s for s, q in self._queues.items() if q.closed and not q.items]:
            del self._queues[sid]

    def take_batch(self, max_size: int, max_wait_s: float, idle_timeout_s: float | None = None) -> Batch | None:
        """Block for up to `max_size` frames; close the batch `max_wait_s` after its first frame.

        Returns None once every stream is closed and drained, or an empty batch if nothing
        arrived within `idle_timeout_s` (lets the caller look at stop flags).
        """
        taken: list[tuple[Frame, float]] = []
        with self._cond:
            idle_deadline = None if idle_timeout_s is None else self._clock() + idle_timeout_s
            while not self._has_frames():
                if self._finished():
                    return None
                remaining = None if idle_deadline is None else idle_deadline - self._clock()
                if remaining is not None and remaining <= 0:
                    return Batch([], [])
                self._wait(1, remaining)
            deadline = self._clock() + max_wait_s
            while True:
                self._take_round_robin(taken, max_size)
                self._wake_producers()  # space freed for blocked producers
                if len(taken) >= max_size or self._finished():
                    break
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                self._wait(max_size - len(taken), remaining)
            now = self._clock()
        return Batch([f for f, _ in taken], [now - t for _, t in taken])

    def _wait(self, need: int, timeout: float | None) -> None:
        """Sleep until `need` frames are queued, a stream closes, or `timeout` (lock held)."""
        self._need = need
        try:
            self._cond.wait(timeout)
        finally:
            self._need = 0
