"""Wires the stages together: decoder threads -> FrameMux -> batcher -> detector backend -> sink.

Per stream, frames are queued in decode order, batches are submitted and published in the
order they were formed, so every Redis stream receives its frames in order.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from fpnstream.batching import Batch, DropPolicy, FrameMux
from fpnstream.config import BatchConfig
from fpnstream.frames import BatchResult
from fpnstream.metrics import Metrics
from fpnstream.sink import RedisStreamSink
from fpnstream.sources.decoder import VideoDecoder

if TYPE_CHECKING:  # backends import torch; the pipeline itself does not need it
    from fpnstream.backends import DetectorBackend

log = logging.getLogger(__name__)


@dataclass
class StreamReport:
    stream_id: str
    decoded: int = 0
    published: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    warning: str | None = None
    error: str | None = None


@dataclass
class RunReport:
    streams: dict[str, StreamReport]
    seconds: float

    @property
    def published(self) -> int:
        return sum(s.published for s in self.streams.values())


_END = object()


class Pipeline:
    def __init__(
        self,
        decoders: list[VideoDecoder],
        backend: DetectorBackend,
        sink: RedisStreamSink,
        metrics: Metrics,
        batch: BatchConfig,
        queue_size: int,
        stop_grace_s: float = 10.0,
    ) -> None:
        self._decoders = decoders
        self._backend = backend
        self._sink = sink
        self._metrics = metrics
        self._batch = batch
        self._stop_grace_s = stop_grace_s
        self._reports = {d.spec.stream_id: StreamReport(d.spec.stream_id) for d in decoders}
        self._mux = FrameMux(on_drop=self._count_drop)
        for d in decoders:
            policy = DropPolicy.DROP_OLDEST if d.spec.live else DropPolicy.BLOCK
            self._mux.add_stream(d.spec.stream_id, queue_size, policy)
        # Bounded: when detectors are busy the batcher blocks, then the queues fill, then file
        # decoders block (live ones drop oldest) — backpressure all the way to the source.
        self._inflight: queue.Queue = queue.Queue(maxsize=max(1, backend.max_inflight))
        self._fatal: BaseException | None = None
        self._lock = threading.Lock()

    # -- counters ----------------------------------------------------------------------------
    def _count_drop(self, stream_id: str, reason: str, n: int = 1) -> None:
        self._metrics.frames_dropped.labels(stream_id, reason).inc(n)
        with self._lock:
            d = self._reports[stream_id].dropped
            d[reason] = d.get(reason, 0) + n

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._fatal is None:
                self._fatal = exc
        self._mux.shutdown()

    # -- stages ------------------------------------------------------------------------------
    def _decode(self, decoder: VideoDecoder, stop: threading.Event) -> None:
        sid = decoder.spec.stream_id
        report = self._reports[sid]
        decoded_metric = self._metrics.frames_decoded.labels(sid)
        decode_hist = self._metrics.stage_seconds.labels("decode")
        seen_decoded = seen_sampled = 0
        try:
            t = time.perf_counter()
            for frame in decoder.frames():
                now = time.perf_counter()
                decode_hist.observe(now - t)
                decoded_metric.inc(decoder.frames_decoded - seen_decoded)
                if decoder.frames_sampled_out != seen_sampled:
                    self._count_drop(sid, "sampled", decoder.frames_sampled_out - seen_sampled)
                seen_decoded, seen_sampled = decoder.frames_decoded, decoder.frames_sampled_out
                report.decoded = seen_decoded
                if not self._mux.put(frame) or stop.is_set():
                    break
                t = time.perf_counter()
            decoded_metric.inc(decoder.frames_decoded - seen_decoded)
            if decoder.frames_sampled_out != seen_sampled:
                self._count_drop(sid, "sampled", decoder.frames_sampled_out - seen_sampled)
            report.decoded = decoder.frames_decoded
            if decoder.warning:
                report.warning = decoder.warning
                log.warning("%s", decoder.warning)
        except Exception as e:  # one broken stream ends that stream, not the job
            report.error = str(e)
            log.error("%s", e)
        finally:
            decoder.close()
            self._mux.close_stream(sid)

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
                if not self._put_inflight(self._backend.submit(batch.frames)):
                    break
        except Exception as e:
            self._fail(e)
        finally:
            self._put_inflight(_END)

    def _publish_loop(self) -> None:
        m = self._metrics
        try:
            while True:
                try:
                    item = self._inflight.get(timeout=0.2)
                except queue.Empty:
                    if self._fatal is not None:
                        return
                    continue
                if item is _END:
                    return
                assert isinstance(item, Future)
                result: BatchResult = item.result()
                m.stage_seconds.labels("preprocess").observe(result.times.preprocess)
                m.stage_seconds.labels("inference").observe(result.times.inference)
                m.stage_seconds.labels("postprocess").observe(result.times.postprocess)
                t0 = time.perf_counter()
                latencies = self._sink.publish(result)
                m.stage_seconds.labels("publish").observe(time.perf_counter() - t0)
                for meta, latency in zip(result.metas, latencies):
                    m.frames_published.labels(meta.stream_id).inc()
                    m.end_to_end_seconds.labels(meta.stream_id).observe(latency)
                    self._reports[meta.stream_id].published += 1
        except BaseException as e:
            self._fail(e)

    # -- driver ------------------------------------------------------------------------------
    def run(self, stop: threading.Event, on_tick: Callable[[], None] | None = None) -> RunReport:
        """Run until every source ends, or `stop` is set (then drain what was decoded)."""
        started = time.monotonic()
        decoders = [
            threading.Thread(target=self._decode, args=(d, stop), name=f"decode-{d.spec.stream_id}", daemon=True)
            for d in self._decoders
        ]
        batcher = threading.Thread(target=self._batch_loop, name="batcher", daemon=True)
        publisher = threading.Thread(target=self._publish_loop, name="publisher", daemon=True)
        for t in (*decoders, batcher, publisher):
            t.start()
        stop_seen_at: float | None = None
        while publisher.is_alive():
            publisher.join(0.25)
            self._update_gauges()
            if on_tick:
                on_tick()
            if stop.is_set() and stop_seen_at is None:
                stop_seen_at = time.monotonic()
                log.info("stopping: no new frames; draining what was decoded")
            if stop_seen_at is not None and time.monotonic() - stop_seen_at > self._stop_grace_s:
                # A decoder stuck in a blocking read must not hold the drain hostage.
                for d in self._decoders:
                    self._mux.close_stream(d.spec.stream_id)
        batcher.join(5)
        self._update_gauges()
        if self._fatal is not None:
            raise self._fatal
        return RunReport(self._reports, time.monotonic() - started)

    def _update_gauges(self) -> None:
        depths = self._mux.depths()  # a drained, finished stream is gone from here: report 0
        for sid in self._reports:
            self._metrics.queue_depth.labels(f"frames:{sid}").set(depths.get(sid, 0))
        self._metrics.queue_depth.labels("inflight_batches").set(self._inflight.qsize())
