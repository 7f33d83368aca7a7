"""The engine: decoder threads -> FrameMux -> batcher -> detector lanes -> publisher.

It wires the pieces and runs the two loops between them; the rules live in the pieces:
`SourceSupervisor` (decoding, reconnects), `StreamLedger` (states, frame accounting),
`FreshnessPolicy` (stale live frames), `Publisher` (Redis, outage buffer, retries).
Per stream, frames are queued in decode order and batches are published in the order they
were formed, so every Redis stream receives its frames in order. Metrics and preview
snapshots are observers; the engine tells them what happened and nothing more.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Callable

from fpnstream.batching.mux import Batch, DropPolicy, FrameMux
from fpnstream.config.settings import BatchConfig
from fpnstream.core.backoff import Backoff
from fpnstream.core.frames import BatchResult
from fpnstream.core.observer import PipelineObserver
from fpnstream.core.redact import redact_text
from fpnstream.core.reports import RunReport, StreamReport, StreamState
from fpnstream.publish.sink import RedisStreamSink
from fpnstream.publish.spool import PublishBuffer
from fpnstream.runtime.freshness import FreshnessPolicy
from fpnstream.runtime.ledger import StreamLedger
from fpnstream.runtime.publisher import END, Publisher
from fpnstream.runtime.supervisor import SourceSupervisor
from fpnstream.sources.decoder import VideoDecoder

if TYPE_CHECKING:  # backends import torch; the pipeline itself does not need it
    from fpnstream.analytics.stage import AnalyticsStage
    from fpnstream.detection.backends import DetectorBackend

log = logging.getLogger(__name__)


def _chain(*stages: Callable[[BatchResult], BatchResult] | None) -> Callable[[BatchResult], BatchResult]:
    """The given stages (None: left out) applied one after the other: the publisher's, in
    publish order (reconnect marks dropped with stale frames are handed on, then tracking)."""
    steps = [s for s in stages if s is not None]

    def run(result: BatchResult) -> BatchResult:
        for step in steps:
            result = step(result)
        return result

    return run


class Pipeline:
    def __init__(
        self,
        backend: DetectorBackend,
        sink: RedisStreamSink,
        observer: PipelineObserver,
        batch: BatchConfig,
        queue_size: int,
        buffer: PublishBuffer | None = None,
        freshness_s: float | None = None,
        keep_open: bool = False,
        stop_grace_s: float = 10.0,
        backoff: Callable[[], Backoff] = lambda: Backoff(0.5, 30.0),
        outage_wait_s: float = 300.0,
        analytics: AnalyticsStage | None = None,
    ) -> None:
        """`keep_open`: sources may still be added when all current ones ended (a worker).
        `buffer`: where results wait while Redis is away (default: 10,000 in memory).
        `analytics`: tracks, zones and lines of the streams that ask for them."""
        self._backend = backend
        self._observer = observer
        self._batch = batch
        self._queue_size = queue_size
        self._stop_grace_s = stop_grace_s
        self._ledger = StreamLedger(observer)
        buffer = buffer if buffer is not None else PublishBuffer(None, 10_000, 0)  # not `or`: empty is falsy
        self._analytics = analytics
        self._freshness = None if freshness_s is None else FreshnessPolicy(
            freshness_s, self._ledger.is_live, lambda frame: self._ledger.drop_frames((frame,), "stale"),
            lambda: self._publisher.batch_seconds)
        self._publisher = Publisher(sink, buffer, self._ledger, observer, outage_wait_s, on_refused=self._refused,
                                    analyze=_chain(self._freshness and self._freshness.carry_gaps,
                                                   analytics and analytics.process))
        buffer.on_drop = lambda result: self._ledger.drop_frames(result.metas, "spool_full")
        self._mux = FrameMux(on_drop=self._ledger.drop, keep_open=keep_open,
                             stale_after_s=self._freshness.age_budget if self._freshness else None)
        self._sources = SourceSupervisor(self._ledger, self._mux, observer, backoff)
        # Bounded: when the detector is busy the batcher blocks, then the queues fill, then file
        # decoders block (live ones drop oldest) — backpressure all the way to the source.
        self._inflight: queue.Queue = queue.Queue(maxsize=max(1, backend.max_inflight))
        # A batch is formed only when the detector can start it (a lane is free): a batch
        # formed earlier would wait up to a whole pass with its frames ageing, where waiting
        # in the mux lets live streams skip to newer frames (the `behind` rule).
        self._detecting = threading.BoundedSemaphore(max(1, backend.max_inflight))
        self._changing = threading.Lock()  # a stream is added or removed as one step
        self._fatal: BaseException | None = None
        self._fatal_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._started_at: float | None = None

    # -- sources ---------------------------------------------------------------------------
    def add_source(self, decoder: VideoDecoder, saved_tracks: bytes | None = None) -> bool:
        """Start a stream (for the claim `decoder.lease`); returns whether its saved tracks
        (from Redis) were restored. A stream this worker read before may still have frames
        of that earlier claim in flight: they carry its lease, so they are fenced and never
        counted, tracked or written as this claim's."""
        spec = decoder.spec
        sid = spec.stream_id
        restored = False

        def prepare() -> None:
            nonlocal restored
            self._ledger.open(sid, spec.live, decoder.lease)  # raises first if the stream runs
            try:
                if self._analytics is not None:
                    restored = self._analytics.open(sid, spec.tracking, spec.zones, spec.lines, saved_tracks,
                                                    decoder.lease)
                self._mux.add_stream(sid, self._queue_size, DropPolicy.DROP_OLDEST if spec.live else DropPolicy.BLOCK,
                                     decoder.lease)
            except Exception as e:  # not half-added: the stream can be added again
                self._ledger.fail(sid, str(e))
                raise

        with self._changing:
            self._sources.add(decoder, prepare)
        return restored

    def remove_source(self, stream_id: str, state: StreamState = StreamState.STOPPED, lease: str | None = None) -> None:
        """Stop reading a stream (only if it reads for `lease`, when given); frames already
        queued are still detected and published."""
        with self._changing:  # never half-way through while the stream is added again
            if not self._sources.end(stream_id, state, lease):
                return
        if state == StreamState.MOVED:
            log.warning("stream %s moved to another worker; this one stops feeding it", stream_id)

    def _refused(self, stream_id: str, lease: str, why: str) -> None:
        """Redis refused frames of `stream_id` decoded under `lease`: another claim owns the
        stream (`why` empty: it moved), or its keys can never take them (it fails, `why`).
        Only the claim read now stops: an earlier claim's late frames leave the current alone."""
        if not why:
            return self.remove_source(stream_id, StreamState.MOVED, lease)
        with self._changing:  # failed and stopped as one step: a re-add must not come between
            if self._sources.lease_of(stream_id) == lease:
                self._ledger.fail(stream_id, why)
                self._sources.end(stream_id, StreamState.FAILED, lease)
                log.error("%s", why)

    def stop_reading(self) -> None:
        for sid in self._sources.stream_ids():
            self.remove_source(sid)

    def seal(self) -> None:
        """No sources will be added any more: finish once the current ones are drained."""
        self._mux.seal()

    def snapshot(self) -> dict[str, StreamReport]:
        return self._ledger.snapshot()

    def _fail(self, exc: BaseException) -> None:
        with self._fatal_lock:
            if self._fatal is None:
                self._fatal = exc
        self._mux.shutdown()

    # -- the two loops -----------------------------------------------------------------------
    def _put_inflight(self, item: object) -> bool:
        return _retry(lambda: self._fatal is not None, lambda: _put(self._inflight, item, 0.2))

    def _batch_loop(self) -> None:
        max_wait = self._batch.max_wait_ms / 1000.0
        admit = self._freshness.admit if self._freshness else None
        try:
            while _retry(lambda: self._fatal is not None, lambda: self._detecting.acquire(timeout=0.2)):
                batch: Batch | None = self._mux.take_batch(self._batch.max_size, max_wait, idle_timeout_s=0.5)
                if batch is None or not batch.frames:
                    self._detecting.release()
                    if batch is None:
                        break
                    continue
                for w in batch.waits:
                    self._observer.stage("batch_wait", w)
                self._observer.batch_formed(batch.frames)
                future = self._backend.submit(batch.frames, admit)
                future.add_done_callback(lambda _: self._detecting.release())
                if not self._put_inflight(future):
                    break
        except Exception as e:
            self._fail(e)
        finally:
            self._put_inflight(END)

    def _publish_loop(self) -> None:
        try:
            self._publisher.run(self._inflight, failed=lambda: self._fatal is not None)
        except BaseException as e:
            self._fail(e)

    # -- driver ------------------------------------------------------------------------------
    def start(self) -> None:
        self._started_at = time.monotonic()
        self._threads = [
            threading.Thread(target=self._batch_loop, name="batcher", daemon=True),
            threading.Thread(target=self._publish_loop, name="publisher", daemon=True),
        ]
        for t in self._threads:
            t.start()
        self._sources.start()

    @property
    def failure(self) -> str:
        """What stopped the pipeline ("" if nothing did): one line, secrets redacted."""
        e = self._fatal
        return "" if e is None else redact_text(f"{type(e).__name__}: {e}".splitlines()[0])

    @property
    def done(self) -> bool:
        return bool(self._threads) and not self._threads[1].is_alive()

    def wait(self, stop: threading.Event, on_tick: Callable[[], None] | None = None) -> RunReport:
        """Until every source is done, or `stop` is set (then drain what was decoded)."""
        assert self._started_at is not None, "start() first"
        publisher = self._threads[1]
        stop_seen_at: float | None = None
        while publisher.is_alive():
            publisher.join(0.25)
            self.update_gauges()
            if on_tick:
                on_tick()
            if stop.is_set() and stop_seen_at is None:
                stop_seen_at = time.monotonic()
                log.info("stopping: no new frames; draining what was decoded")
                self.stop_reading()
                self.seal()
            if stop_seen_at is not None and time.monotonic() - stop_seen_at > self._stop_grace_s:
                log.warning("grace period over; frames still queued are dropped")
                self._mux.shutdown()
                break
        self._threads[0].join(5)
        self.update_gauges()
        if self._fatal is not None:
            raise self._fatal
        return RunReport(self.snapshot(), time.monotonic() - self._started_at)

    def run(self, stop: threading.Event, on_tick: Callable[[], None] | None = None) -> RunReport:
        self.start()
        return self.wait(stop, on_tick)

    def update_gauges(self) -> None:
        self._observer.gauges(self._mux.depths(), self._ledger.snapshot(), self._inflight.qsize(), self._ledger.backlog())


def _retry(failed: Callable[[], bool], attempt: Callable[[], bool]) -> bool:
    """Repeat `attempt` (a wait of at most a fraction of a second) until it succeeds; False
    once `failed()`: a loop blocked on a full queue or a busy detector notices a fatal error."""
    while not failed():
        if attempt():
            return True
    return False


def _put(q: queue.Queue, item: object, timeout: float) -> bool:
    try:
        q.put(item, timeout=timeout)
        return True
    except queue.Full:
        return False
