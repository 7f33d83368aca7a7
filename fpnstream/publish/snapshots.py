"""Preview snapshots: the newest frame of each stream, with its detections, kept in Redis.

A worker holds on to at most one frame per stream every 1/fps seconds and, once that
frame's detections are published, writes it as a scaled-down JPEG to
`<prefix>:preview:<stream id>` (a hash that expires after `ttl_s`). `fpnstream preview`
reads those hashes: it needs no access to the cameras, wherever the workers run.

Hash fields: v, stream, frame, ts (capture), published_ts, width, height (original frame),
jpeg (bytes), jpeg_width, jpeg_height, detections (schema v1 JSON, original pixels),
latency_ms, fps, dropped (total), drops (JSON by reason), state, model, and for a stream
with zones or lines `analytics` (JSON: their geometry and counts so far, see
`StreamAnalytics.overlay`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Mapping, Sequence

import redis

from fpnstream import SCHEMA_VERSION
from fpnstream.config.settings import PreviewConfig
from fpnstream.core.frames import BatchResult, Frame
from fpnstream.core.observer import PipelineObserver
from fpnstream.publish.keys import preview_key

if TYPE_CHECKING:
    from fpnstream.core.reports import StreamReport

log = logging.getLogger(__name__)

# A held frame not published within this long was lost on the way: stop waiting for it.
_HOLD_LIMIT_S = 10.0


class NoSnapshots(PipelineObserver):
    """Preview off. As an observer of the pipeline, snapshots hold a frame when its batch
    forms (`offer`) and write it once its detections are published (`write`)."""

    def batch_formed(self, frames: Sequence[Frame]) -> None:
        self.offer(frames)

    def published(self, result, latencies, skipped, reports) -> None:
        self.write(result, reports)

    def offer(self, frames: Sequence[Frame]) -> None:
        pass

    def write(self, result: BatchResult, reports: Mapping[str, StreamReport]) -> None:
        pass


class PreviewSnapshots(NoSnapshots):
    def __init__(self, client: redis.Redis, prefix: str, model: str, fps: float, max_width: int = 640,
                 quality: int = 75, ttl_s: float = 60.0) -> None:
        self._client = client
        self._prefix = prefix
        self._model = model
        self._period = 1.0 / fps
        self._max_width = max_width
        self._quality = quality
        self._ttl_ms = int(ttl_s * 1000)
        self._held: dict[str, Frame] = {}
        self._held_at: dict[str, float] = {}
        self._next_due: dict[str, float] = {}
        self._lock = threading.Lock()
        self._warned = False

    @classmethod
    def from_config(cls, cfg: PreviewConfig, client: redis.Redis, prefix: str, model: str) -> NoSnapshots:
        if cfg.fps <= 0:
            return NoSnapshots()
        return cls(client, prefix, model, cfg.fps, cfg.max_width, cfg.quality, cfg.ttl_s)

    def offer(self, frames: Sequence[Frame]) -> None:
        """Called with each batch before detection: keep a reference (no copy; frames are
        immutable) to one frame per stream per period."""
        now = time.monotonic()
        with self._lock:
            for f in frames:
                held = self._held.get(f.stream_id)
                # Keep the held frame until it is published: replacing it every period would
                # starve the preview whenever publishing lags by more than a period. A frame
                # held too long was dropped before detection (or the stream restarted).
                if held is not None and now - self._held_at[f.stream_id] < _HOLD_LIMIT_S:
                    continue
                if now >= self._next_due.get(f.stream_id, 0.0):
                    self._held[f.stream_id] = f
                    self._held_at[f.stream_id] = now
                    self._next_due[f.stream_id] = now + self._period

    def write(self, result: BatchResult, reports: Mapping[str, StreamReport]) -> None:
        """Called after a batch is published: write the held frames it contains."""
        due = []
        with self._lock:
            for meta, dets in zip(result.metas, result.detections):
                held = self._held.get(meta.stream_id)
                if held is None:
                    continue
                if held.index == meta.index and held.capture_ts == meta.capture_ts:
                    due.append((self._held.pop(meta.stream_id), dets, self._overlay(result, meta.stream_id)))
                elif meta.index >= held.index:  # the held frame was dropped (stale): hold a newer one
                    del self._held[meta.stream_id]
        if not due:
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for frame, dets, overlay in due:
                key = preview_key(self._prefix, frame.stream_id)
                fields = self._fields(frame, dets.to_json_list(), reports.get(frame.stream_id))
                if overlay is not None:
                    fields["analytics"] = json.dumps(overlay, separators=(",", ":"))
                pipe.hset(key, mapping=fields)
                pipe.pexpire(key, self._ttl_ms)
            pipe.execute()
        except redis.RedisError as e:  # best effort: the preview never holds up detections
            if not self._warned:
                log.warning("preview snapshot not written: %s", type(e).__name__)
                self._warned = True

    @staticmethod
    def _overlay(result: BatchResult, stream_id: str):
        """The stream's zones and lines as of the end of this batch (counts may run a few
        frames ahead of the snapshot's frame, never behind it)."""
        analytics = result.analytics.get(stream_id)
        return analytics.overlay if analytics is not None else None

    def _fields(self, frame: Frame, dets: list[dict], report: StreamReport | None) -> dict[str, str | bytes]:
        from PIL import Image

        from fpnstream.publish.draw import to_jpeg

        img = Image.fromarray(frame.image)
        if img.width > self._max_width:
            img = img.resize((self._max_width, max(1, round(img.height * self._max_width / img.width))), Image.BILINEAR)
        now = time.time()
        drops = dict(report.dropped) if report else {}
        return {
            "v": SCHEMA_VERSION,
            "stream": frame.stream_id,
            "frame": str(frame.index),
            "ts": repr(frame.capture_ts),
            "published_ts": repr(now),
            "width": str(frame.width),
            "height": str(frame.height),
            "jpeg": to_jpeg(img, self._quality),
            "jpeg_width": str(img.width),
            "jpeg_height": str(img.height),
            "detections": json.dumps(dets, separators=(",", ":")),
            "latency_ms": f"{(now - frame.capture_ts) * 1000.0:.3f}",
            "fps": f"{report.fps if report else 0.0:.3f}",
            "dropped": str(sum(drops.values())),
            "drops": json.dumps(drops, separators=(",", ":")),
            "state": report.state if report else "",
            "model": self._model,
        }
