"""A stream worker: decodes, detects and publishes the streams assigned to it, on one device.

Plain Python; `fpnstream.cluster` places workers on a Ray cluster as actors. Decoding where
the detector is means only compressed video crosses the network, never raw frames.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
import uuid
from typing import Any

from prometheus_client import generate_latest

import fpnstream
from fpnstream.config import AppConfig
from fpnstream.metrics import Metrics
from fpnstream.pipeline import Pipeline
from fpnstream.redis_server import connect
from fpnstream.sink import RedisStreamSink
from fpnstream.sources import SourceSpec, VideoDecoder


class StreamWorker:
    def __init__(self, cfg: AppConfig, redis_url: str) -> None:
        # Cheap on purpose: Ray re-runs this when it restarts the actor, and the coordinator
        # notices the new incarnation and calls load() again.
        self._cfg = cfg
        self._redis_url = redis_url
        self.incarnation = uuid.uuid4().hex
        self._pipeline: Pipeline | None = None
        self._sink: RedisStreamSink | None = None
        self._metrics = Metrics()

    def load(self) -> dict[str, Any]:
        from fpnstream.app import backoff_policy, buffer_options
        from fpnstream.backends import InProcessBackend
        from fpnstream.model import Detector
        from fpnstream.snapshots import PreviewSnapshots

        cfg = self._cfg
        detector = Detector.from_config(cfg.model)
        client = connect(self._redis_url, cfg.redis.socket_timeout_s)
        self._sink = RedisStreamSink(client, cfg.redis.prefix, cfg.redis.maxlen, detector.model_name)
        self._metrics.build_info.info({"version": fpnstream.__version__, "model": detector.model_name, "device": str(detector.device)})
        freshness = cfg.batch.freshness_ms / 1000.0 if cfg.batch.freshness_ms else None
        self._pipeline = Pipeline(
            InProcessBackend(detector, cfg.ray.max_inflight_per_actor, self._metrics.gpu_memory), self._sink, self._metrics, cfg.batch,
            cfg.decode.queue_size, freshness_s=freshness, keep_open=True, stop_grace_s=cfg.stop_grace_s,
            backoff=backoff_policy(cfg), **buffer_options(cfg),
            snapshots=PreviewSnapshots.from_config(cfg.preview, client, cfg.redis.prefix, detector.model_name),
        )
        self._pipeline.start()
        return {"incarnation": self.incarnation, "model": detector.model_name, "device": str(detector.device),
                "host": socket.gethostname(), "pid": os.getpid()}

    def assign(self, spec: SourceSpec, owner: str, restart: bool) -> int:
        """Take over a stream; returns the frame index it resumes from."""
        assert self._pipeline is not None and self._sink is not None, "load() first"
        # A resumed file skips the frames before `start` (they are in Redis already); a live
        # stream numbers its frames on from there, so indices never go back.
        start = self._sink.claim(spec.stream_id, owner=owner, restart=restart)
        self._pipeline.add_source(VideoDecoder(spec, self._cfg.decode, start_index=start))
        return start

    def unassign(self, stream_id: str) -> None:
        if self._pipeline is not None:
            self._pipeline.remove_source(stream_id)

    def status(self) -> dict[str, Any]:
        if self._pipeline is None:
            return {"incarnation": self.incarnation, "loaded": False, "streams": {}, "metrics": ""}
        self._pipeline.update_gauges()  # workers have no wait() loop; the status poll is the tick
        return {
            "incarnation": self.incarnation,
            "loaded": True,
            "pid": os.getpid(),
            "streams": {sid: dataclasses.asdict(r) for sid, r in self._pipeline.snapshot().items()},
            "metrics": generate_latest(self._metrics.registry).decode(),
        }

    def drain(self, grace_s: float) -> dict[str, Any]:
        """Stop reading, finish what was decoded (up to `grace_s`), return the final status."""
        if self._pipeline is not None:
            self._pipeline.stop_reading()
            self._pipeline.seal()
            deadline = time.monotonic() + grace_s
            while not self._pipeline.done and time.monotonic() < deadline:
                time.sleep(0.05)
        return self.status()
