"""Wires the stages together: decoder threads -> FrameMux -> batcher -> detector -> sink.

Per stream, frames are queued in decode order, batches are submitted and published in the
order they were formed, so every Redis stream receives its frames in order. Sources can be
added and removed while it runs (a cluster worker does that); the CLI's in-process path
adds them all up front and runs until they end.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from fpnstream.batching import Batch, DropPolicy, FrameMux
from fpnstream.config import BatchConfig
from fpnstream.frames import BatchResult, Frame
from fpnstream.metrics import Metrics
from fpnstream.errors import SinkError
from fpnstream.sink import RedisStreamSink
from fpnstream.errors import SourceError
from fpnstream.sources.decoder import VideoDecoder
from fpnstream.sources.reconnect import Backoff
from fpnstream.snapshots import NoSnapshots
from fpnstream.spool import PublishBuffer

if TYPE_CHECKING:  # backends import torch; the pipeline itself does not need it
    from fpnstream.backends import DetectorBackend

log = logging.getLogger(__name__)

# Stream states, as shown by `fpnstream streams list` and in the status hash.
STARTING, STREAMING, DRAINING = "starting", "streaming", "draining"  # draining: source ended, frames in flight
CONNECTING, BACKING_OFF = "connecting", "backing_off"  # live sources between connections
FINISHED, STOPPED, FAILED, MOVED = "finished", "stopped", "failed", "moved"
ENDED_STATES = frozenset({FINISHED, STOPPED, FAILED, MOVED})


@dataclass
class StreamReport:
    stream_id: str
    live: bool = False
    state: str = STARTING
    decoded: int = 0
    published: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    warning: str | None = None
    error: str | None = None
    last_frame_ts: float | None = None  # wall time of the newest published frame
    fps: float = 0.0  # published frames per second, smoothed
    reconnects: int = 0


@dataclass
class RunReport:
    streams: dict[str, StreamReport]
    seconds: float

    @property
    def published(self) -> int:
        return sum(s.published for s in self.streams.values())


@dataclass
class _Source:
    decoder: VideoDecoder
    stop: threading.Event
    thread: threading.Thread | None = None


_END = object()


class Pipeline:
    def __init__(
        self,
        backend: DetectorBackend,
        sink: RedisStreamSink,
        metrics: Metrics,
        batch: BatchConfig,
        queue_size: int,
        freshness_s: float | None = None,
        keep_open: bool = False,
        stop_grace_s: float = 10.0,
        backoff: Callable[[], Backoff] = lambda: Backoff(0.5, 30.0),
        buffer_frames: int = 10_000,
        spool_dir: str | None = None,
        spool_bytes: int = 0,
        outage_wait_s: float = 300.0,
        snapshots: NoSnapshots | None = None,
    ) -> None:
        """`backoff` makes the reconnect policy of each live source. While Redis is down,
        results wait in memory (`buffer_frames`), then in `spool_dir` (`spool_bytes`); at
        the end of a run the publisher waits up to `outage_wait_s` for Redis to return.
        `snapshots` keeps preview frames (fpnstream preview); default: none."""
        self._snapshots = snapshots or NoSnapshots()
        self._backoff = backoff
        spool = Path(spool_dir) / f"{os.getpid()}-{uuid.uuid4().hex[:8]}" if spool_dir else None
        self._buffer = PublishBuffer(spool, buffer_frames, spool_bytes, self._spool_overflow)
        self._outage_wait_s = outage_wait_s
        self._backend = backend
        self._sink = sink
        self._metrics = metrics
        self._batch = batch
        self._queue_size = queue_size
        self._freshness_s = freshness_s
        self._stop_grace_s = stop_grace_s
        self._sources: dict[str, _Source] = {}
        self._reports: dict[str, StreamReport] = {}
        self._mux = FrameMux(on_drop=self._count_drop, keep_open=keep_open,
                             stale_after_s=self._age_budget if freshness_s is not None else None)
        # Bounded: when the detector is busy the batcher blocks, then the queues fill, then file
        # decoders block (live ones drop oldest) — backpressure all the way to the source.
        self._inflight: queue.Queue = queue.Queue(maxsize=max(1, backend.max_inflight))
        self._fatal: BaseException | None = None
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._started_at: float | None = None
        self._fps_window: dict[str, tuple[float, int]] = {}
        self._pending: dict[str, int] = {}  # accepted frames not yet published or dropped
        self._batch_seconds_ema = 0.0  # detect + publish time of recent batches

    # -- sources ---------------------------------------------------------------------------
    def add_source(self, decoder: VideoDecoder) -> None:
        sid = decoder.spec.stream_id
        with self._lock:
            old = self._sources.get(sid)
            if old is not None and self._reports[sid].state not in ENDED_STATES:
                raise ValueError(f"stream {sid!r} is already running")
            self._mux.add_stream(sid, self._queue_size, DropPolicy.DROP_OLDEST if decoder.spec.live else DropPolicy.BLOCK)
            if sid in self._reports:  # the same stream opened again in this process
                self._metrics.source_reconnects.labels(sid).inc()
            else:
                self._metrics.source_reconnects.labels(sid).inc(0)
            self._metrics.source_up.labels(sid).set(0)
            self._reports[sid] = StreamReport(sid, live=decoder.spec.live)
            self._pending[sid] = 0
            src = self._sources[sid] = _Source(decoder, threading.Event())
            if self._started_at is not None:
                self._start_decoder(src)

    def remove_source(self, stream_id: str, state: str = STOPPED) -> None:
        """Stop reading a stream; frames already queued are still detected and published."""
        with self._lock:
            src = self._sources.get(stream_id)
            if src is None:
                return
            src.stop.set()
            report = self._reports[stream_id]
            if report.state not in ENDED_STATES or state == MOVED:
                report.state = state
        self._mux.close_stream(stream_id)

    def stop_reading(self) -> None:
        for sid in list(self._sources):
            self.remove_source(sid)

    def seal(self) -> None:
        """No sources will be added any more: finish once the current ones are drained."""
        self._mux.seal()

    def snapshot(self) -> dict[str, StreamReport]:
        with self._lock:
            return {sid: replace(r, dropped=dict(r.dropped)) for sid, r in self._reports.items()}

    # -- counters ----------------------------------------------------------------------------
    def _count_drop(self, stream_id: str, reason: str, n: int = 1) -> None:
        self._metrics.frames_dropped.labels(stream_id, reason).inc(n)
        with self._lock:
            d = self._reports[stream_id].dropped
            d[reason] = d.get(reason, 0) + n
            if reason in ("queue_full", "stale", "spool_full"):  # accepted frames that leave without publishing
                self._settle(stream_id, n)

    def _settle(self, stream_id: str, n: int) -> None:
        """`n` accepted frames of a stream are done with (caller holds the lock)."""
        self._pending[stream_id] -= n
        report = self._reports[stream_id]
        if report.state == DRAINING and self._pending[stream_id] <= 0:
            report.state = FINISHED

    def _spool_overflow(self, result: BatchResult) -> None:
        for meta in result.metas:
            self._count_drop(meta.stream_id, "spool_full")

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._fatal is None:
                self._fatal = exc
        self._mux.shutdown()

    # -- stages ------------------------------------------------------------------------------
    def _start_decoder(self, src: _Source) -> None:
        src.thread = threading.Thread(target=self._decode, args=(src,), name=f"decode-{src.decoder.spec.stream_id}", daemon=True)
        src.thread.start()

    def _decode(self, src: _Source) -> None:
        sid = src.decoder.spec.stream_id
        try:
            if src.decoder.spec.live:
                self._decode_live(src)
            else:
                self._decode_connection(src, src.decoder)
                report = self._reports[sid]
                with self._lock:
                    if report.state in (STARTING, STREAMING):
                        report.state = FINISHED if self._pending[sid] <= 0 else DRAINING
        except Exception as e:  # one broken stream ends that stream, not the job
            report = self._reports[sid]
            report.error, report.state = str(e), FAILED
            log.error("%s", e)
        finally:
            self._metrics.source_up.labels(sid).set(0)
            self._mux.close_stream(sid)

    def _decode_live(self, src: _Source) -> None:
        """Connect, stream, and on any failure back off and reconnect, until stopped.
        Frame indices go on across connections; the first frame after one is marked `gap`."""
        sid = src.decoder.spec.stream_id
        report = self._reports[sid]
        backoff = self._backoff()
        decoder = src.decoder
        while not src.stop.is_set():
            report.state = CONNECTING
            try:
                self._decode_connection(src, decoder, on_first_frame=backoff.reset)
                if src.stop.is_set():
                    break
                report.error = f"source {sid}: the stream ended"
            except SourceError as e:
                report.error = str(e)
            if src.stop.is_set():
                break
            self._metrics.source_up.labels(sid).set(0)
            report.state = BACKING_OFF
            delay = backoff.next_delay()
            log.warning("%s; reconnecting in %.1f s", report.error, delay)
            if src.stop.wait(delay):
                break
            report.reconnects += 1
            self._metrics.source_reconnects.labels(sid).inc()
            decoder = decoder.reopened()
            src.decoder = decoder

    def _decode_connection(self, src: _Source, decoder: VideoDecoder, on_first_frame: Callable[[], None] | None = None) -> None:
        """Read one connection (or one file) to its end, feeding the mux."""
        sid = decoder.spec.stream_id
        report = self._reports[sid]
        decoded_metric = self._metrics.frames_decoded.labels(sid)
        decode_hist = self._metrics.stage_seconds.labels("decode")
        seen_decoded = seen_sampled = 0

        def account() -> None:
            nonlocal seen_decoded, seen_sampled
            decoded_metric.inc(decoder.frames_decoded - seen_decoded)
            if decoder.frames_sampled_out != seen_sampled:
                self._count_drop(sid, "sampled", decoder.frames_sampled_out - seen_sampled)
            report.decoded += decoder.frames_decoded - seen_decoded
            seen_decoded, seen_sampled = decoder.frames_decoded, decoder.frames_sampled_out

        try:
            t, paced = time.perf_counter(), 0.0
            for frame in decoder.frames():
                slept = decoder.pacer.slept_s  # a realtime file's wait is not decoding
                decode_hist.observe(time.perf_counter() - t - (slept - paced))
                paced = slept
                if report.state in (STARTING, CONNECTING):
                    report.state = STREAMING
                    self._metrics.source_up.labels(sid).set(1)
                    if on_first_frame:
                        on_first_frame()
                account()
                with self._lock:
                    self._pending[sid] += 1  # before put: the batcher may take it at once
                if src.stop.is_set() or not self._mux.put(frame):
                    with self._lock:
                        self._pending[sid] -= 1
                    # Decoded after the stop: never accepted, but accounted for.
                    self._count_drop(sid, "stopped")
                    break
                t = time.perf_counter()
            account()
            if decoder.warning:
                report.warning = decoder.warning
                log.warning("%s", decoder.warning)
        finally:
            decoder.close()

    def _age_budget(self) -> float:
        """How old a live frame may be when it goes into a batch: the freshness limit minus
        the recent detect+publish time, so it is still fresh when published. Never below a
        quarter of the limit: if the model alone is slower than the limit, detect the
        freshest frames rather than none."""
        assert self._freshness_s is not None
        return max(self._freshness_s - self._batch_seconds_ema, 0.25 * self._freshness_s)

    def _admit(self, frames: list[Frame]) -> list[Frame]:
        """Right before inference: drop live frames that would be older than the freshness
        limit by the time they are published (age now + the recent batch time)."""
        if self._freshness_s is None:
            return frames
        cutoff = time.time() - self._age_budget()
        fresh = []
        for f in frames:
            if self._reports[f.stream_id].live and f.capture_ts < cutoff:
                self._count_drop(f.stream_id, "stale")
            else:
                fresh.append(f)
        return fresh

    def _put_inflight(self, item: object) -> bool:
        while self._fatal is None:
            try:
                self._inflight.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _batch_loop(self) -> None:
        max_wait = self._batch.max_wait_ms / 1000.0
        wait_hist = self._metrics.stage_seconds.labels("batch_wait")
        try:
            while self._fatal is None:
                batch: Batch | None = self._mux.take_batch(self._batch.max_size, max_wait, idle_timeout_s=0.5)
                if batch is None:
                    break
                if not batch.frames:
                    continue
                for w in batch.waits:
                    wait_hist.observe(w)
                self._metrics.batch_size.observe(len(batch.frames))
                self._snapshots.offer(batch.frames)
                if not self._put_inflight(self._backend.submit(batch.frames, self._admit)):
                    break
        except Exception as e:
            self._fail(e)
        finally:
            self._put_inflight(_END)

    def _publish_loop(self) -> None:
        """Results go through the buffer, oldest first; a Redis failure keeps them there and
        retries with backoff while detection goes on."""
        m = self._metrics
        retry = Backoff(0.2, 5.0)
        retry_at = 0.0
        end_deadline: float | None = None
        try:
            while self._fatal is None:
                if end_deadline is None:
                    try:
                        item = self._inflight.get(timeout=0.2)
                    except queue.Empty:
                        item = None
                    if item is _END:
                        end_deadline = time.monotonic() + self._outage_wait_s
                    elif item is not None:
                        result: BatchResult = item.result()
                        if result.metas:
                            m.stage_seconds.labels("preprocess").observe(result.times.preprocess)
                            m.stage_seconds.labels("inference").observe(result.times.inference)
                            m.stage_seconds.labels("postprocess").observe(result.times.postprocess)
                            self._buffer.append(result)
                elif self._buffer:
                    time.sleep(0.05)
                if self._buffer and time.monotonic() >= retry_at:
                    try:
                        self._flush()
                        if retry.attempt:
                            log.info("Redis is back; buffered results published")
                        retry.reset()
                    except SinkError as e:
                        m.publish_errors.inc()
                        delay = retry.next_delay()
                        if retry.attempt == 1:
                            log.warning("%s; buffering results and retrying", e)
                        retry_at = time.monotonic() + delay
                if end_deadline is not None:
                    if not self._buffer:
                        return
                    if time.monotonic() > end_deadline:
                        raise SinkError(f"Redis still unreachable after {self._outage_wait_s:g} s; "
                                        f"{self._buffer.frames} frame(s) not published")
        except BaseException as e:
            self._fail(e)

    def _flush(self) -> None:
        while (result := self._buffer.peek()) is not None:
            t0 = time.perf_counter()
            published = self._sink.publish(result)
            publish_s = time.perf_counter() - t0
            self._metrics.stage_seconds.labels("publish").observe(publish_s)
            t = result.times
            self._batch_seconds_ema += 0.2 * (t.preprocess + t.inference + t.postprocess + publish_s - self._batch_seconds_ema)
            self._account_published(result, published)
            self._buffer.pop()
            self._snapshots.published(result, self._reports)

    def _account_published(self, result: BatchResult, published) -> None:
        now = time.time()
        m = self._metrics
        per_class: Counter[tuple[str, str]] = Counter()  # one metric update per class, not per box
        for meta, dets, latency in zip(result.metas, result.detections, published.latencies):
            if meta.stream_id in published.fenced:
                continue
            m.frames_published.labels(meta.stream_id).inc()
            per_class.update((meta.stream_id, name) for name in dets.names)
            m.end_to_end_seconds.labels(meta.stream_id).observe(latency)
            report = self._reports[meta.stream_id]
            report.published += 1
            with self._lock:
                self._settle(meta.stream_id, 1)
            report.last_frame_ts = now
            # Frames are published a batch at a time, so measure the rate over windows of 2 s.
            start, count = self._fps_window.get(meta.stream_id, (now, 0))
            if now - start >= 2.0:
                report.fps = count / (now - start)
                start, count = now, 0
            self._fps_window[meta.stream_id] = (start, count + 1)
        for (sid, name), n in per_class.items():
            m.detections.labels(sid, name).inc(n)
        for sid in published.fenced:
            log.warning("stream %s moved to another worker; this one stops feeding it", sid)
            self.remove_source(sid, state=MOVED)

    # -- driver ------------------------------------------------------------------------------
    def start(self) -> None:
        self._started_at = time.monotonic()
        self._threads = [
            threading.Thread(target=self._batch_loop, name="batcher", daemon=True),
            threading.Thread(target=self._publish_loop, name="publisher", daemon=True),
        ]
        for t in self._threads:
            t.start()
        with self._lock:
            for src in self._sources.values():
                if src.thread is None:
                    self._start_decoder(src)

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
        depths = self._mux.depths()  # a drained, finished stream is gone from here: report 0
        for sid in list(self._reports):
            self._metrics.queue_depth.labels(f"frames:{sid}").set(depths.get(sid, 0))
        self._metrics.queue_depth.labels("inflight_batches").set(self._inflight.qsize())
        with self._lock:
            self._metrics.publish_backlog.set(max(0, sum(self._pending.values())))
