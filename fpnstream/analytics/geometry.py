"""Zones and lines in frame pixels, tested with shapely."""

from __future__ import annotations

import numpy as np
import shapely
from shapely.geometry import LineString, Polygon

from fpnstream.config.analytics import LineConfig, ZoneConfig
from fpnstream.core.events import Direction


def anchors(boxes: np.ndarray, anchor: str) -> np.ndarray:
    """The point of each box (x1 y1 x2 y2) that zones and lines test."""
    x = (boxes[:, 0] + boxes[:, 2]) / 2
    y = boxes[:, 3] if anchor == "bottom_center" else (boxes[:, 1] + boxes[:, 3]) / 2
    return np.stack([x, y], axis=1) if len(boxes) else np.zeros((0, 2))


class Zone:
    def __init__(self, cfg: ZoneConfig) -> None:
        self.name = cfg.name
        self.points = [list(p) for p in cfg.polygon]
        self._polygon = Polygon(cfg.polygon)
        shapely.prepare(self._polygon)

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Which points lie inside (or on the edge of) the polygon."""
        if not len(points):
            return np.zeros(0, bool)
        return shapely.intersects_xy(self._polygon, points[:, 0], points[:, 1])


class Line:
    """A directed segment: crossing it from the left-hand side to the right-hand side, looking
    from `start` to `end`, is `in` (for a line drawn left to right across the image, that is
    moving down the image); the other way is `out`."""

    def __init__(self, cfg: LineConfig) -> None:
        self.name = cfg.name
        self.start, self.end = list(cfg.start), list(cfg.end)
        self._start = np.asarray(cfg.start, float)
        self._dir = np.asarray(cfg.end, float) - self._start
        self._segment = LineString([cfg.start, cfg.end])

    def side(self, point: np.ndarray) -> float:
        """> 0 right of the line, < 0 left of it (image coordinates, y pointing down)."""
        rel = np.asarray(point, float) - self._start
        return float(self._dir[0] * rel[1] - self._dir[1] * rel[0])

    def crossing(self, before: np.ndarray, after: np.ndarray) -> Direction | None:
        """The direction if moving from `before` to `after` crosses the segment, else None.
        Touching the line without passing to the other side is not a crossing."""
        s0, s1 = self.side(before), self.side(after)
        if s0 == 0 or s1 == 0 or (s0 > 0) == (s1 > 0):
            return None
        if not self._segment.intersects(LineString([tuple(before), tuple(after)])):
            return None  # passed beside the segment's end, not through it
        return Direction.IN if s0 < 0 else Direction.OUT
