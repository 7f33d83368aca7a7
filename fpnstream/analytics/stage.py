"""The analytics stage: after detection, before publish, for every stream that is tracked.

It sees each stream's results in frame order (the publisher's order), adds track ids,
collects the zone and line events, and attaches each tracked stream's state after the
batch, which the sink writes in the same fenced call as the batch's entries.
"""

from __future__ import annotations

import dataclasses
import logging
import threading

from fpnstream.analytics.tracker_state import StateError
from fpnstream.config.analytics import LineConfig, TrackingConfig, TrackingOverride, ZoneConfig
from fpnstream.core.frames import BatchResult, StreamAnalytics

log = logging.getLogger(__name__)


class AnalyticsStage:
    def __init__(self, defaults: TrackingConfig) -> None:
        self._defaults = defaults
        self._streams: dict[str, tuple[StreamAnalyzer, str]] = {}  # id -> its analyzer, the claim it is for
        self._lock = threading.Lock()  # streams open and close on the worker's control thread

    def tracking_for(self, override: TrackingOverride | None, zones: tuple, lines: tuple) -> TrackingConfig | None:
        """A stream's effective tracking config, or None if it is not tracked. Zones and
        lines need tracks, so a stream that has any is tracked."""
        cfg = override.over(self._defaults) if override is not None else self._defaults
        return cfg if cfg.enabled or zones or lines else None

    def open(self, stream_id: str, override: TrackingOverride | None, zones: tuple[ZoneConfig, ...],
             lines: tuple[LineConfig, ...], saved: bytes | None, lease: str = "") -> bool:
        """Start analysing a stream (if it is tracked), from its saved state when it has one.
        Only frames of the claim `lease` are analysed: frames of an earlier claim still in
        flight would feed the tracker out of order (they are fenced off anyway).
        Returns whether saved tracks were restored."""
        cfg = self.tracking_for(override, zones, lines)
        with self._lock:
            self._streams.pop(stream_id, None)
        if cfg is None:
            return False
        from fpnstream.analytics.tracking import StreamAnalyzer  # shapely, trackers: only when tracking

        analyzer = StreamAnalyzer(stream_id, cfg, zones, lines)
        restored = False
        if saved:
            try:
                analyzer.restore(saved)
                restored = True
            except StateError as e:
                log.warning("stream %s: saved tracks not restored (%s); track ids start over", stream_id, e)
        with self._lock:
            self._streams[stream_id] = (analyzer, lease)
        return restored

    def close(self, stream_id: str) -> None:
        with self._lock:
            self._streams.pop(stream_id, None)

    def process(self, result: BatchResult) -> BatchResult:
        with self._lock:
            streams = dict(self._streams)
        if not streams or not result.metas:
            return result
        detections, events, touched = list(result.detections), [], {}
        for i, meta in enumerate(result.metas):
            analyzer, lease = streams.get(meta.stream_id, (None, None))
            if analyzer is None or meta.lease != lease:
                continue
            detections[i], frame_events = analyzer.process(meta, detections[i])
            events += frame_events
            touched[meta.stream_id] = analyzer
        if not touched:
            return result
        analytics = {sid: StreamAnalytics(a.save(), a.occupancy(), a.overlay()) for sid, a in touched.items()}
        return dataclasses.replace(result, detections=tuple(detections), events=tuple(events), analytics=analytics)
