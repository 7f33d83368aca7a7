"""What the pipeline tells whoever watches it (metrics, preview snapshots). The engine calls
these hooks; observers never change what the pipeline does. Every hook defaults to nothing."""

from __future__ import annotations

from typing import Mapping, Sequence

from fpnstream.core.frames import BatchResult, Frame
from fpnstream.core.reports import StreamReport


class PipelineObserver:
    def stream_added(self, stream_id: str, again: bool) -> None:
        """A source was added; `again`: this stream ran before in this process."""

    def source_up(self, stream_id: str, up: bool) -> None: ...

    def reconnected(self, stream_id: str) -> None: ...

    def decoded(self, stream_id: str, n: int) -> None: ...

    def dropped(self, stream_id: str, reason: str, n: int) -> None: ...

    def stage(self, name: str, seconds: float) -> None:
        """Time of one stage: per frame (decode, batch_wait) or per batch (the others)."""

    def batch_formed(self, frames: Sequence[Frame]) -> None: ...

    def published(self, result: BatchResult, latencies: Sequence[float], skipped: frozenset[str],
                  reports: Mapping[str, StreamReport]) -> None:
        """A batch is in Redis; frames of streams in `skipped` were not written (fenced)."""

    def publish_failed(self) -> None: ...

    def gauges(self, depths: Mapping[str, int], streams: Mapping[str, StreamReport], inflight: int,
               backlog: int) -> None:
        """Now and then (a tick): queue depths, every stream's report, batches in flight."""


class Observers(PipelineObserver):
    """Fans every hook out to several observers, in order."""

    def __init__(self, *observers: PipelineObserver) -> None:
        self._all = observers

    def stream_added(self, stream_id, again):
        for o in self._all:
            o.stream_added(stream_id, again)

    def source_up(self, stream_id, up):
        for o in self._all:
            o.source_up(stream_id, up)

    def reconnected(self, stream_id):
        for o in self._all:
            o.reconnected(stream_id)

    def decoded(self, stream_id, n):
        for o in self._all:
            o.decoded(stream_id, n)

    def dropped(self, stream_id, reason, n):
        for o in self._all:
            o.dropped(stream_id, reason, n)

    def stage(self, name, seconds):
        for o in self._all:
            o.stage(name, seconds)

    def batch_formed(self, frames):
        for o in self._all:
            o.batch_formed(frames)

    def published(self, result, latencies, skipped, reports):
        for o in self._all:
            o.published(result, latencies, skipped, reports)

    def publish_failed(self):
        for o in self._all:
            o.publish_failed()

    def gauges(self, depths, streams, inflight, backlog):
        for o in self._all:
            o.gauges(depths, streams, inflight, backlog)
