"""Prometheus metrics. One `Metrics` object per process is handed to the stages that record."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from fpnstream.errors import FpnstreamError

# From 1 ms (a Redis pipeline) to 30 s (a big batch on a CPU).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

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
            "fpnstream_end_to_end_seconds", "Capture to publish, per frame", ["stream"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.frames_decoded = Counter("fpnstream_frames_decoded_total", "Frames decoded", ["stream"], registry=r)
        self.frames_published = Counter("fpnstream_frames_published_total", "Frames published to Redis", ["stream"], registry=r)
        self.frames_dropped = Counter(
            "fpnstream_frames_dropped_total", "Frames not published, by reason", ["stream", "reason"], registry=r,
        )
        self.batch_size = Histogram("fpnstream_batch_size", "Frames per detector batch", buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("fpnstream_queue_depth", "Items waiting in a queue", ["queue"], registry=r)
        self.build_info = Info("fpnstream_build", "Version, model and device", registry=r)
        for stage in STAGES:  # export zero-count series so dashboards see every stage from the start
            self.stage_seconds.labels(stage)



def serve(registry: CollectorRegistry, port: int, host: str) -> None:
    """Expose `registry` on http://host:port/metrics (port 0: don't)."""
    if port == 0:
        return
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        raise FpnstreamError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from None
