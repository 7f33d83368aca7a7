"""One stream's analytics: a tracker of the `trackers` library, then zones and lines.

Plain Python: it is fed a stream's detections in frame order and returns them with track
ids, plus the events of that frame. Its whole state (tracks, who is inside which zone,
where each track was last seen) saves to JSON and loads back, so a stream that moves to
another worker, or a job that restarts, goes on with the same track ids.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from fpnstream.analytics import tracker_state
from fpnstream.analytics.geometry import Line, Zone, anchors
from fpnstream.config.analytics import LineConfig, TrackingConfig, ZoneConfig
from fpnstream.core.events import Direction, Event, EventKind
from fpnstream.core.frames import Detections, FrameMeta

_INT_PARAMS = {"lost_track_buffer", "minimum_consecutive_frames"}
STATE_VERSION = 1


def build_tracker(cfg: TrackingConfig) -> Any:
    """The library's tracker with the configured parameters (its defaults for the rest)."""
    import trackers

    cls = {"bytetrack": trackers.ByteTrackTracker, "sort": trackers.SORTTracker}[cfg.algorithm]
    params = {k: int(v) if k in _INT_PARAMS else float(v) for k, v in cfg.params.items()}
    return cls(**params)


def to_supervision(dets: Detections):
    """Our aligned batch as `supervision.Detections`, remembering each row's position."""
    import supervision as sv

    return sv.Detections(xyxy=dets.boxes.astype(np.float32).reshape(-1, 4), confidence=dets.scores.astype(np.float32),
                         class_id=dets.labels.astype(int), data={"row": np.arange(len(dets))})


def track_ids_in_order(tracked, n: int) -> np.ndarray:
    """The tracker's ids put back in our detection order (-1: not on a confirmed track)."""
    ids = np.full(n, -1, np.int64)
    if len(tracked):
        ids[np.asarray(tracked.data["row"], int)] = np.asarray(tracked.tracker_id, np.int64)
    return ids


def _no_crossings() -> dict[str, int]:
    return {d.value: 0 for d in Direction}


class _TrackerClock:
    """The time the tracker is told, which must never go back: the library skips every
    update older than its last one, so after a live stream reconnects (or moves to another
    worker and opens a new connection), its timestamps starting from 0 again froze the
    tracker, with no track ids and no events, until they passed the old ones. Across such a
    jump the stream time goes on by the wall-clock time between the two frames."""

    def __init__(self, offset: float = 0.0, last: float | None = None, last_capture: float | None = None) -> None:
        self._offset, self._last, self._last_capture = offset, last, last_capture

    def time_of(self, meta: FrameMeta) -> float | None:
        if meta.pts is None:
            return None  # no timestamps at all: the tracker counts frames
        t = meta.pts + self._offset
        if self._last is not None and t < self._last:
            gap = meta.capture_ts - self._last_capture if self._last_capture is not None else 0.0
            self._offset += self._last - t + max(gap, 1e-3)
            t = meta.pts + self._offset
        self._last, self._last_capture = t, meta.capture_ts
        return t

    def state(self) -> list:
        return [self._offset, self._last, self._last_capture]


class StreamAnalyzer:
    def __init__(self, stream_id: str, tracking: TrackingConfig, zones: tuple[ZoneConfig, ...] = (),
                 lines: tuple[LineConfig, ...] = ()) -> None:
        self.stream_id = stream_id
        self._tracking = tracking
        self._tracker = build_tracker(tracking)
        self._zones = [Zone(z) for z in zones]
        self._lines = [Line(ln) for ln in lines]
        self._inside: dict[str, dict[int, list]] = {z.name: {} for z in self._zones}  # zone -> track -> [label, name]
        # line -> track -> its last anchor point off that line
        self._last: dict[str, dict[int, list[float]]] = {ln.name: {} for ln in self._lines}
        # line -> crossings so far in this run, by direction (saved: counts survive a move)
        self._crossed: dict[str, dict[str, int]] = {ln.name: _no_crossings() for ln in self._lines}
        self._classes_seen: set[tuple[str, str]] = set()  # (zone, class): report 0 after they leave
        self._clock = _TrackerClock()

    # -- per frame ---------------------------------------------------------------------------
    def process(self, meta: FrameMeta, dets: Detections) -> tuple[Detections, list[Event]]:
        tracked = self._tracker.update(to_supervision(dets), timestamp=self._clock.time_of(meta))
        ids = track_ids_in_order(tracked, len(dets))
        events: list[Event] = []
        if self._zones or self._lines:
            events = self._events(meta, dets, ids)
        return dataclasses.replace(dets, track_ids=ids), events

    def _events(self, meta: FrameMeta, dets: Detections, ids: np.ndarray) -> list[Event]:
        events: list[Event] = []
        seen = ids >= 0
        points = anchors(dets.boxes[seen], self._tracking.anchor)
        rows = [(int(t), int(lab), name) for t, lab, name in zip(ids[seen], dets.labels[seen],
                                                                  np.asarray(dets.names, object)[seen])]

        def event(kind: EventKind, where: str, track: int, label: int, name: str, direction=None) -> None:
            events.append(Event(self.stream_id, meta.index, meta.capture_ts, kind, where, track, label, name, direction))

        for zone in self._zones:
            members = self._inside[zone.name]
            for (track, label, name), inside in zip(rows, zone.contains(points)):
                if inside and track not in members:
                    members[track] = [label, name]
                    self._classes_seen.add((zone.name, name))
                    event(EventKind.ENTER, zone.name, track, label, name)
                elif not inside and track in members:
                    del members[track]
                    event(EventKind.EXIT, zone.name, track, label, name)
        for line in self._lines:
            last = self._last[line.name]
            for (track, label, name), point in zip(rows, points):
                if line.side(point) == 0:
                    continue  # on the line: not crossed yet; compare the next point off it
                before = last.get(track)
                if before is not None:
                    direction = line.crossing(np.asarray(before), point)
                    if direction is not None:
                        event(EventKind.CROSS, line.name, track, label, name, direction)
                        self._crossed[line.name][direction.value] += 1
                last[track] = [float(point[0]), float(point[1])]
        # Tracks the tracker has given up on (lost past its buffer): they leave their zones.
        alive = {int(t.tracker_id) for t in self._tracker.tracks}
        for zone in self._zones:
            members = self._inside[zone.name]
            for track in [t for t in members if t not in alive]:
                label, name = members.pop(track)
                event(EventKind.EXIT, zone.name, track, label, name)
        for last in self._last.values():
            for track in [t for t in last if t not in alive]:
                del last[track]
        return events

    def occupancy(self) -> tuple[tuple[str, str, int], ...]:
        """(zone, class, tracks inside) for every class seen in a zone, 0 once they left."""
        counts = dict.fromkeys(self._classes_seen, 0)
        for zone in self._zones:
            for _, name in self._inside[zone.name].values():
                counts[(zone.name, name)] = counts.get((zone.name, name), 0) + 1
        return tuple((z, c, n) for (z, c), n in sorted(counts.items()))

    def overlay(self) -> dict | None:
        """Zones and lines with their counts so far, for the preview; None without any."""
        if not self._zones and not self._lines:
            return None
        return {
            "zones": [{"name": z.name, "polygon": z.points, "inside": len(self._inside[z.name])} for z in self._zones],
            "lines": [{"name": ln.name, "start": ln.start, "end": ln.end, **self._crossed[ln.name]} for ln in self._lines],
        }

    # -- state -------------------------------------------------------------------------------
    def save(self) -> bytes:
        return tracker_state.dumps({
            "v": STATE_VERSION, "algorithm": self._tracking.algorithm,
            "tracker": tracker_state.dump_tracker(self._tracker),
            "inside": {z: [[t, lab, name] for t, (lab, name) in m.items()] for z, m in self._inside.items()},
            "last": {ln: [[t, p] for t, p in m.items()] for ln, m in self._last.items()},
            "crossed": self._crossed,
            "clock": self._clock.state(),
        })

    def restore(self, blob: bytes) -> None:
        """Load a state saved by `save`; raises StateError (and changes nothing) if it is
        unreadable or was made by another algorithm."""
        data = tracker_state.loads(blob)
        if not isinstance(data, dict) or data.get("v") != STATE_VERSION or data.get("algorithm") != self._tracking.algorithm:
            raise tracker_state.StateError("saved tracks were made by another tracker or version")
        fresh = build_tracker(self._tracking)
        tracker_state.load_tracker(fresh, data["tracker"])
        inside = {z.name: {} for z in self._zones}
        for zone, members in data.get("inside", {}).items():
            if zone in inside:  # a zone removed from the config since is forgotten
                inside[zone] = {int(t): [int(lab), str(name)] for t, lab, name in members}
        self._tracker, self._inside = fresh, inside
        last = {ln.name: {} for ln in self._lines}
        for line, points in data.get("last", {}).items():
            if line in last:
                last[line] = {int(t): [float(p[0]), float(p[1])] for t, p in points}
        self._last = last
        crossed = {ln.name: _no_crossings() for ln in self._lines}
        for line, counts in data.get("crossed", {}).items():
            if line in crossed:
                crossed[line] = {d: int(counts.get(d, 0)) for d in crossed[line]}
        self._crossed = crossed
        # Saved before the clock was: go on from the tracker's own last time.
        self._clock = _TrackerClock(*data.get("clock", (0.0, getattr(fresh, "_last_timestamp", None), None)))
