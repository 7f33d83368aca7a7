"""Prometheus metrics and the HTTP endpoint that serves them with health checks.

One `Metrics` object per pipeline process is handed to the stages that record.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from fpnstream.core.observer import PipelineObserver
from fpnstream.core.errors import FpnstreamError

# From 1 ms (a Redis pipeline) to 30 s (a big batch on a CPU).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 5.0, 10.0, 30.0)
# 1.0-2.0 s in quarter steps: the default freshness limit (2 s) can be read off the histogram.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

# Exported from the start (zero counts) so dashboards see them; `track` appears once a
# stream is tracked.
STAGES = ("decode", "batch_wait", "preprocess", "inference", "postprocess", "publish")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.stage_seconds = Histogram(
            "fpnstream_stage_seconds", "Seconds spent per frame (decode, batch_wait) or per batch in a stage",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "fpnstream_end_to_end_seconds", "Capture to acknowledged publish, per frame", ["stream"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.frames_decoded = Counter("fpnstream_frames_decoded_total", "Frames decoded", ["stream"], registry=r)
        self.frames_published = Counter("fpnstream_frames_published_total", "Frames published to Redis", ["stream"], registry=r)
        self.frames_dropped = Counter(
            "fpnstream_frames_dropped_total", "Frames not published, by reason", ["stream", "reason"], registry=r,
        )
        self.batch_size = Histogram("fpnstream_batch_size", "Frames per detector batch", buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("fpnstream_queue_depth", "Items waiting in a queue", ["queue"], registry=r)
        self.source_up = Gauge("fpnstream_source_up", "1 while a source delivers frames, else 0", ["stream"], registry=r)
        self.source_reconnects = Counter(
            "fpnstream_source_reconnects_total", "Times a source was opened again after its first open", ["stream"], registry=r,
        )
        self.publish_errors = Counter("fpnstream_publish_errors_total", "Failed Redis writes", registry=r)
        self.publish_backlog = Gauge(
            "fpnstream_publish_backlog", "Frames accepted from decoders and not yet published or dropped", registry=r,
        )
        self.detections = Counter(
            "fpnstream_detections_total", "Published detections, by class name", ["stream", "name"], registry=r,
        )
        self.zone_occupancy = Gauge(
            "fpnstream_zone_occupancy", "Tracked objects inside a zone now, by class", ["stream", "zone", "class"], registry=r)
        self.line_crossings = Counter(
            "fpnstream_line_crossings_total", "Tracked objects that crossed a line, by direction and class",
            ["stream", "line", "direction", "class"], registry=r)
        self.zone_events = Counter(
            "fpnstream_zone_events_total", "Zone enter/exit events published", ["stream", "zone", "kind"], registry=r)
        self.gpu_memory = Gauge("fpnstream_gpu_memory_bytes", "CUDA memory allocated by the detector", ["device"], registry=r)
        self.build_info = Info("fpnstream_build", "Version, model and device", registry=r)
        for stage in STAGES:  # export zero-count series so dashboards see every stage from the start
            self.stage_seconds.labels(stage)


class MetricsObserver(PipelineObserver):
    """Turns what the pipeline reports into the Prometheus series above."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics
        # Labelled children, looked up once: `labels()` takes a lock and builds a key on every
        # call, and decode/publish hooks run per frame on the decoder and publisher threads.
        self._stage: dict[str, Histogram] = {}
        self._decoded: dict[str, Counter] = {}
        self._published: dict[str, tuple[Counter, Histogram]] = {}
        self._occupancy: dict[str, set[tuple[str, str]]] = {}  # stream -> (zone, class) series it set

    def stream_added(self, stream_id: str, again: bool) -> None:
        self._m.source_reconnects.labels(stream_id).inc(1 if again else 0)  # 0: the series exists

    def source_up(self, stream_id: str, up: bool) -> None:
        self._m.source_up.labels(stream_id).set(1 if up else 0)

    def reconnected(self, stream_id: str) -> None:
        self._m.source_reconnects.labels(stream_id).inc()

    def decoded(self, stream_id: str, n: int) -> None:
        counter = self._decoded.get(stream_id)
        if counter is None:
            counter = self._decoded[stream_id] = self._m.frames_decoded.labels(stream_id)
        counter.inc(n)

    def dropped(self, stream_id: str, reason: str, n: int) -> None:
        self._m.frames_dropped.labels(stream_id, reason).inc(n)

    def stage(self, name: str, seconds: float) -> None:
        hist = self._stage.get(name)
        if hist is None:
            hist = self._stage[name] = self._m.stage_seconds.labels(name)
        hist.observe(seconds)

    def batch_formed(self, frames) -> None:
        self._m.batch_size.observe(len(frames))

    def published(self, result, latencies, skipped, reports) -> None:
        """`skipped`: (stream, lease) of the claims whose frames Redis refused."""
        per_class: Tally[tuple[str, str]] = Tally()  # one counter update per class, not per box
        written = set()
        for meta, dets, latency in zip(result.metas, result.detections, latencies):
            if (meta.stream_id, meta.lease) in skipped:
                continue
            written.add(meta.stream_id)
            series = self._published.get(meta.stream_id)
            if series is None:
                series = self._published[meta.stream_id] = (self._m.frames_published.labels(meta.stream_id),
                                                             self._m.end_to_end_seconds.labels(meta.stream_id))
            series[0].inc()
            series[1].observe(latency)
            per_class.update((meta.stream_id, name) for name in dets.names)
        for (sid, name), n in per_class.items():
            self._m.detections.labels(sid, name).inc(n)
        if result.analytics:
            # Events and occupancy are the stream's current claim's (analytics fences by
            # lease): skipped only for a stream none of whose frames were written.
            self._analytics(result, {sid for sid, _ in skipped} - written)

    def _analytics(self, result, skipped: set[str]) -> None:
        for e in result.events:
            if e.stream_id in skipped:
                continue
            if e.direction is not None:
                self._m.line_crossings.labels(e.stream_id, e.where, e.direction.value, e.name).inc()
            else:
                self._m.zone_events.labels(e.stream_id, e.where, e.kind.value).inc()
        for sid, a in result.analytics.items():
            if sid not in skipped:
                for zone, name, n in a.occupancy:
                    self._m.zone_occupancy.labels(sid, zone, name).set(n)
                    self._occupancy.setdefault(sid, set()).add((zone, name))

    def publish_failed(self) -> None:
        self._m.publish_errors.inc()

    def gauges(self, depths, streams, inflight, backlog) -> None:
        for sid, report in streams.items():  # a drained, finished stream is gone from `depths`: report 0
            self._m.queue_depth.labels(f"frames:{sid}").set(depths.get(sid, 0))
            if report.state.ended:
                # Not counted here any more (moved to another worker, stopped, finished): a
                # last value left behind was added to the new owner's in every sum by zone.
                for zone, name in self._occupancy.pop(sid, ()):
                    self._m.zone_occupancy.remove(sid, zone, name)
        self._m.queue_depth.labels("inflight_batches").set(inflight)
        self._m.publish_backlog.set(backlog)


class DriverMetrics:
    """The coordinator's own series (the workers' are merged in by `WorkerMetrics`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.redis_up = Gauge("fpnstream_redis_up", "1 while the coordinator reaches Redis, else 0", registry=r)
        self.redis_outages = Counter(
            "fpnstream_redis_outages_total", "Times the coordinator lost Redis (it keeps running and retries)", registry=r)
        self.worker_hangs = Counter(
            "fpnstream_worker_hangs_total", "Workers that answered polls but finished no batch in time (restarted)",
            registry=r)
        self.stream_moves = Counter(
            "fpnstream_stream_moves_total", "Streams moved to another worker, by reason", ["reason"], registry=r)
        self.workers_wanted = Gauge(
            "fpnstream_workers_wanted", "Workers the running streams need (ray.streams_per_worker each), as asked "
            "of Ray's autoscaler; 0 until more than the cluster holds were needed", registry=r)
        self.redis_up.set(1)


class MetricsServer:
    """/metrics for Prometheus, /healthz (the process answers) and /readyz (it can work)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._registry = registry
        self.ready: Callable[[], bool] = lambda: False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?")[0]
                if path == "/metrics":
                    self._send(200, generate_latest(server._registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b"ok\n")
                elif path == "/readyz":
                    ok = server._is_ready()
                    self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                else:
                    self._send(404, b"not found: try /metrics, /healthz or /readyz\n")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # scrapes every few seconds: keep logs quiet
                pass

        try:
            self._httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as e:
            raise FpnstreamError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from None
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True).start()

    def _is_ready(self) -> bool:
        try:
            return bool(self.ready())
        except Exception:
            return False

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def serve(registry: CollectorRegistry, port: int, host: str) -> MetricsServer | None:
    """Expose `registry` on http://host:port/metrics (port 0: don't)."""
    return MetricsServer(registry, host, port) if port else None
