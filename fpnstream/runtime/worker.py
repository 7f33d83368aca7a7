"""A stream worker: decodes, detects and publishes the streams assigned to it, on one device.

Plain Python. A worker pool runs workers in this process (`LocalPool`) or as Ray actors
(`fpnstream.cluster.RayPool`); the coordinator talks to both the same way. Decoding where
the detector is means only compressed video crosses the network, never raw frames.
"""

from __future__ import annotations

import os
import socket
import time
import uuid

import redis
from prometheus_client import generate_latest

import fpnstream
from fpnstream.config.settings import AppConfig
from fpnstream.core.failpoints import NO_FAILPOINTS
from fpnstream.core.reports import Assignment, Resume, WorkerInfo, WorkerStatus
from fpnstream.observe.metrics import Metrics
from fpnstream.publish.connection import lazy_client
from fpnstream.publish.sink import RedisStreamSink
from fpnstream.runtime.build import build_pipeline
from fpnstream.sources import SourceSpec, VideoDecoder


class StreamWorker:
    def __init__(self, cfg: AppConfig, redis_url: str, metrics: Metrics | None = None) -> None:
        # Cheap on purpose: Ray re-runs this when it restarts the actor, and the coordinator
        # notices the new incarnation and calls load() again.
        self._cfg = cfg
        self._redis_url = redis_url
        self.incarnation = uuid.uuid4().hex
        self._pipeline = None
        self._backend = None
        self._sink: RedisStreamSink | None = None
        self._failpoints = NO_FAILPOINTS  # read as it loads (the worker process's entry point)
        self._metrics = metrics or Metrics()

    def load(self) -> WorkerInfo:
        from fpnstream.core.failpoints import Failpoints
        from fpnstream.detection.backends import InProcessBackend  # torch loads here
        from fpnstream.detection.plugins import load_detector
        from fpnstream.publish.snapshots import PreviewSnapshots

        cfg = self._cfg
        detector = load_detector(cfg.model, cfg.batch.max_size)
        # Redis may be away: load anyway. The driver has found out whether it is a cluster.
        client = lazy_client(self._redis_url, cfg.redis.socket_timeout_s, bool(cfg.redis.cluster))
        self._sink = RedisStreamSink(client, cfg.redis.prefix, cfg.redis.maxlen, detector.model_name)
        self._metrics.build_info.info({"version": fpnstream.__version__, "model": detector.model_name, "device": str(detector.device)})
        # The worker process's entry point: the one place it reads failpoints (inert unless set).
        self._failpoints = Failpoints.from_environ(os.environ)
        self._backend = InProcessBackend(detector, cfg.ray.max_inflight_per_actor, self._metrics.gpu_memory,
                                         self._failpoints)
        snapshots = PreviewSnapshots.from_config(cfg.preview, client, cfg.redis.prefix, detector.model_name)
        self._pipeline = build_pipeline(cfg, self._backend, self._sink, self._metrics, snapshots, keep_open=True)
        self._pipeline.start()
        return WorkerInfo(self.incarnation, detector.model_name, str(detector.device), socket.gethostname(), os.getpid())

    def assign(self, spec: SourceSpec, owner: str, restart: bool, known: Resume | None = None) -> Assignment:
        """Take over a stream; returns the frame index it resumes from."""
        assert self._pipeline is not None and self._sink is not None, "load() first"
        # A resumed file skips the frames before `start` (they are in Redis already); a live
        # stream numbers its frames on from there, so indices never go back.
        start = self._sink.claim(spec.stream_id, owner=owner, restart=restart, known=known)
        if self._failpoints.fires("claim.reply_lost"):
            raise redis.TimeoutError("failpoint claim.reply_lost fired: the claim was made, its reply lost")
        # A live stream that goes on from an earlier owner missed frames in between: say so.
        decoder = VideoDecoder(spec, self._cfg.decode, start_index=start, gap=spec.live and start > 0, lease=owner)
        # Its tracks go on from the state saved with its last published frame.
        restored = self._pipeline.add_source(decoder, self._sink.saved_tracks(spec.stream_id))
        return Assignment(start, restored, self._sink.run_of(spec.stream_id), self._sink.recovered(spec.stream_id))

    def unassign(self, stream_id: str) -> None:
        if self._sink is not None:  # should Redis lose its data, the stream's claim is another's to write back
            self._sink.release(stream_id)
        if self._pipeline is not None:
            self._pipeline.remove_source(stream_id)

    def status(self) -> WorkerStatus:
        if self._pipeline is None:
            return WorkerStatus(self.incarnation, loaded=False)
        self._pipeline.update_gauges()  # workers have no wait() loop; the status poll is the tick
        return WorkerStatus(self.incarnation, True, self._pipeline.snapshot(), self._backend.progress(),
                            generate_latest(self._metrics.registry).decode(), self._pipeline.failure)

    def drain(self, grace_s: float) -> WorkerStatus:
        """Stop reading, finish what was decoded (up to `grace_s`), return the final status."""
        if self._pipeline is not None:
            self._pipeline.stop_reading()
            self._pipeline.seal()
            deadline = time.monotonic() + grace_s
            while not self._pipeline.done and time.monotonic() < deadline:
                time.sleep(0.05)
        return self.status()

    def abandon(self) -> None:
        """Stop reading every stream and let go (a hung worker being replaced in-process):
        its claims are fenced by the new owners, its stuck lane stays where it is."""
        if self._pipeline is not None:
            self._pipeline.stop_reading()

    def close(self) -> None:
        """Release the detector lanes (a local pool; a Ray actor's process simply ends)."""
        if self._backend is not None:
            self._backend.close()
