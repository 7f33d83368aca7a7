"""The stream ledger: each stream's state machine and its frame accounting, under one lock.

Every accepted frame leaves exactly one way: published, or dropped for a counted reason;
`pending` is what is still in between. A file's stream is FINISHED when its source ended
and nothing is pending; a stream another worker took over is MOVED.

A stream's report is its current claim's (`lease`): a frame of an earlier claim on this
worker that is published or dropped late is counted in the metrics, never in the report
or the pending count of the claim that followed it.
"""

from __future__ import annotations

import threading
from dataclasses import replace

from fpnstream.core.observer import PipelineObserver
from fpnstream.core.reports import ENDED_STATES, StreamReport, StreamState

# Drop reasons of frames that were accepted (counted in `pending`) and leave unpublished.
_ACCEPTED_DROPS = frozenset({"queue_full", "behind", "stale", "spool_full", "unwritable", "fenced"})


class StreamLedger:
    def __init__(self, observer: PipelineObserver) -> None:
        self._observer = observer
        self._lock = threading.Lock()
        self._reports: dict[str, StreamReport] = {}
        self._pending: dict[str, int] = {}
        self._leases: dict[str, str] = {}
        self._fps_window: dict[str, tuple[float, int]] = {}

    # -- streams -----------------------------------------------------------------------------
    def open(self, stream_id: str, live: bool, lease: str = "") -> None:
        """A (new or again opened) stream, read for the claim `lease`; raises if it is still running."""
        with self._lock:
            old = self._reports.get(stream_id)
            if old is not None and old.state not in ENDED_STATES:
                raise ValueError(f"stream {stream_id!r} is already running")
            self._reports[stream_id] = StreamReport(stream_id, live=live)
            self._pending[stream_id] = 0
            self._leases[stream_id] = lease
        self._observer.stream_added(stream_id, again=old is not None)
        self._observer.source_up(stream_id, False)

    def report(self, stream_id: str) -> StreamReport:
        """The live report object; its owner thread (the stream's decoder) updates it."""
        return self._reports[stream_id]

    def is_live(self, stream_id: str) -> bool:
        return self._reports[stream_id].live

    def known(self, stream_id: str) -> bool:
        return stream_id in self._reports

    def end(self, stream_id: str, state: StreamState) -> None:
        """The stream stops reading (stopped, or moved); MOVED overrides any end state."""
        with self._lock:
            report = self._reports[stream_id]
            if report.state not in ENDED_STATES or state == StreamState.MOVED:
                report.state = state

    def source_done(self, stream_id: str) -> None:
        """A file's decoder reached the end: finished once its frames are out."""
        with self._lock:
            report = self._reports[stream_id]
            if report.state in (StreamState.STARTING, StreamState.STREAMING):
                report.state = StreamState.FINISHED if self._pending[stream_id] <= 0 else StreamState.DRAINING

    def fail(self, stream_id: str, error: str) -> None:
        with self._lock:
            report = self._reports[stream_id]
            report.error, report.state = error, StreamState.FAILED

    # -- frames ------------------------------------------------------------------------------
    def accept(self, stream_id: str) -> None:
        """Before the frame is queued: the batcher may take it at once."""
        with self._lock:
            self._pending[stream_id] += 1

    def unaccept(self, stream_id: str) -> None:
        with self._lock:
            self._pending[stream_id] -= 1

    def drop(self, stream_id: str, reason: str, n: int = 1) -> None:
        self._observer.dropped(stream_id, reason, n)
        with self._lock:
            d = self._reports[stream_id].dropped
            d[reason] = d.get(reason, 0) + n
            if reason in _ACCEPTED_DROPS:
                self._settle(stream_id, n)

    def drop_frames(self, metas, reason: str) -> None:
        """Accepted frames (their FrameMeta, or Frame) dropped for one reason, e.g. a full
        spool; those of an earlier claim count in the metrics only."""
        for meta in metas:
            if self._leases.get(meta.stream_id) == meta.lease:
                self.drop(meta.stream_id, reason)
            else:
                self._observer.dropped(meta.stream_id, reason, 1)

    def published(self, meta, now: float, latency_s: float) -> None:
        """A frame (its FrameMeta) is in Redis."""
        stream_id = meta.stream_id
        with self._lock:
            if self._leases.get(stream_id) != meta.lease:
                return  # an earlier claim's frame: its report is gone
            report = self._reports[stream_id]
            report.latency_s = latency_s if report.published == 0 else report.latency_s + 0.1 * (latency_s - report.latency_s)
            report.published += 1
            report.next_frame = max(report.next_frame, meta.index + 1)
            self._settle(stream_id, 1)
            report.last_frame_ts = now
            # Frames are published a batch at a time, so measure the rate over windows of 2 s.
            start, count = self._fps_window.get(stream_id, (now, 0))
            if now - start >= 2.0:
                report.fps = count / (now - start)
                start, count = now, 0
            self._fps_window[stream_id] = (start, count + 1)

    def _settle(self, stream_id: str, n: int) -> None:
        """`n` accepted frames are done with (caller holds the lock)."""
        self._pending[stream_id] -= n
        report = self._reports[stream_id]
        if report.state == StreamState.DRAINING and self._pending[stream_id] <= 0:
            report.state = StreamState.FINISHED

    # -- views -------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, StreamReport]:
        with self._lock:
            return {sid: replace(r, dropped=dict(r.dropped)) for sid, r in self._reports.items()}

    def reports(self) -> dict[str, StreamReport]:
        """The live objects, for observers that read a field or two (no copy)."""
        return self._reports

    def stream_ids(self) -> list[str]:
        return list(self._reports)

    def backlog(self) -> int:
        with self._lock:
            return max(0, sum(self._pending.values()))
