"""The publish stage's loop: results of the detector, in submission order, through the
outage buffer into Redis. A Redis failure keeps them buffered (memory, then disk) and
retries with backoff while detection goes on; at the end of a run it waits a bounded time
for Redis to come back."""

from __future__ import annotations

import logging
import queue
import time
from typing import Callable

from fpnstream.core.backoff import Backoff
from fpnstream.core.errors import SinkError
from fpnstream.core.frames import BatchResult
from fpnstream.core.observer import PipelineObserver
from fpnstream.publish.sink import RedisStreamSink
from fpnstream.publish.spool import PublishBuffer
from fpnstream.runtime.ledger import StreamLedger

log = logging.getLogger(__name__)

END = object()  # put on the queue after the last batch


class Publisher:
    def __init__(self, sink: RedisStreamSink, buffer: PublishBuffer, ledger: StreamLedger, observer: PipelineObserver,
                 outage_wait_s: float, on_refused: Callable[[str, str, str], None],
                 analyze: Callable[[BatchResult], BatchResult] = lambda r: r) -> None:
        """`analyze`: the analytics stage (tracks, zones, lines), run on each result in
        submission order, before it is buffered, so a stream's tracker sees its frames in order.
        `on_refused(stream, lease, why)`: Redis refused that claim's frames: another claim
        owns the stream (`why` is ""), or the stream's keys can never take them (`why`)."""
        self._sink = sink
        self._analyze = analyze
        self._buffer = buffer
        self._ledger = ledger
        self._observer = observer
        self._outage_wait_s = outage_wait_s
        self._on_refused = on_refused
        self.batch_seconds = 0.0  # detect + publish time of recent batches (moving average)

    def run(self, inflight: queue.Queue, failed: Callable[[], bool]) -> None:
        """Until END has come and everything is published; raises SinkError if Redis stays
        away past the outage wait."""
        retry = Backoff(0.2, 5.0)
        retry_at = 0.0
        end_deadline: float | None = None
        while not failed():
            if end_deadline is None:
                try:
                    item = inflight.get(timeout=0.2)
                except queue.Empty:
                    item = None
                if item is END:
                    end_deadline = time.monotonic() + self._outage_wait_s
                elif item is not None:
                    result: BatchResult = item.result()
                    if result.metas:
                        self._observer.stage("preprocess", result.times.preprocess)
                        self._observer.stage("inference", result.times.inference)
                        self._observer.stage("postprocess", result.times.postprocess)
                        t0 = time.perf_counter()
                        result = self._analyze(result)
                        if result.analytics:
                            self._observer.stage("track", time.perf_counter() - t0)
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
                    self._observer.publish_failed()
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

    def _flush(self) -> None:
        while (result := self._buffer.peek()) is not None:
            t0 = time.perf_counter()
            published = self._sink.publish(result)
            publish_s = time.perf_counter() - t0
            self._observer.stage("publish", publish_s)
            t = result.times
            self.batch_seconds += 0.2 * (t.preprocess + t.inference + t.postprocess + publish_s - self.batch_seconds)
            now = time.time()
            for meta, latency in zip(result.metas, published.latencies):
                claim = (meta.stream_id, meta.lease)
                if not published.refused(*claim):
                    self._ledger.published(meta, now, latency)
                else:  # never written: another claim owns the stream, or its keys cannot take it
                    self._ledger.drop_frames((meta,), "unwritable" if claim in published.unwritable else "fenced")
            self._buffer.pop()
            self._observer.published(result, published.latencies, published.skipped, self._ledger.reports())
            for sid, lease in published.fenced:
                self._on_refused(sid, lease, "")
            for (sid, lease), why in published.unwritable.items():
                self._on_refused(sid, lease, why)
