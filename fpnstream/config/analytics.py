"""Configuration of the analytics stage: tracking, zones and lines (see fpnstream.analytics)."""

from __future__ import annotations

import math

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fpnstream.core.ids import STREAM_ID

Point = tuple[float, float]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# The parameters each algorithm of the `trackers` library takes (its own names and defaults
# apply for anything not given here).
TRACKER_PARAMS = {
    "bytetrack": {"lost_track_buffer", "frame_rate", "track_activation_threshold", "minimum_consecutive_frames",
                  "minimum_iou_threshold", "high_conf_det_threshold"},
    "sort": {"lost_track_buffer", "frame_rate", "track_activation_threshold", "minimum_consecutive_frames",
             "minimum_iou_threshold"},
}


# What each parameter may be (the library fails later, mid-run, or tracks nothing otherwise).
_INTEGER_PARAMS = {"lost_track_buffer": 0, "minimum_consecutive_frames": 1}  # name -> least value
_SHARES = {"track_activation_threshold", "minimum_iou_threshold", "high_conf_det_threshold"}  # 0..1


def _check_params(algorithm: str, params: dict[str, float]) -> None:
    known = TRACKER_PARAMS.get(algorithm) or set().union(*TRACKER_PARAMS.values())
    if unknown := set(params) - known:
        raise ValueError(f"unknown {algorithm} parameter(s): {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(sorted(known))}")
    for name, v in params.items():
        if name in _INTEGER_PARAMS and (v != int(v) or v < _INTEGER_PARAMS[name]):
            raise ValueError(f"tracking parameter {name} must be a whole number >= {_INTEGER_PARAMS[name]}, not {v:g}")
        if name in _SHARES and not 0 <= v <= 1:
            raise ValueError(f"tracking parameter {name} must be between 0 and 1, not {v:g}")
        if name == "frame_rate" and not 0 < v <= 1000:
            raise ValueError(f"tracking parameter frame_rate must be above 0 and at most 1000, not {v:g}")


class TrackingConfig(_Strict):
    enabled: bool = Field(default=False, description="track objects (adds track_id to detections)")
    algorithm: Literal["bytetrack", "sort"] = Field(default="bytetrack", description="a tracker of the `trackers` library")
    params: dict[str, float] = Field(default_factory=dict, description="the algorithm's parameters, e.g. lost_track_buffer")
    anchor: Literal["bottom_center", "center"] = Field(
        default="bottom_center", description="the point of a box that zones and lines test (feet for people)")

    @model_validator(mode="after")
    def _known_params(self) -> TrackingConfig:
        _check_params(self.algorithm, self.params)
        return self


class TrackingOverride(_Strict):
    """Per stream: what differs from the job's `tracking:` section."""

    enabled: bool | None = None
    algorithm: Literal["bytetrack", "sort"] | None = None
    params: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_params(self) -> TrackingOverride:
        # Without an algorithm of its own, the job's applies, unknown here: any algorithm's
        # names pass, and `over` checks the stream's result against the job's.
        _check_params(self.algorithm or "any algorithm", self.params)
        return self

    def over(self, base: TrackingConfig) -> TrackingConfig:
        algorithm = self.algorithm or base.algorithm
        params = {**(base.params if algorithm == base.algorithm else {}), **self.params}
        enabled = base.enabled if self.enabled is None else self.enabled
        return TrackingConfig(enabled=enabled, algorithm=algorithm, params=params, anchor=base.anchor)


class ZoneConfig(_Strict):
    name: str = Field(pattern=f"^{STREAM_ID}$")
    polygon: tuple[Point, ...] = Field(min_length=3, description="vertices in frame pixels, [[x, y], ...]")

    @field_validator("polygon")
    @classmethod
    def _simple(cls, v: tuple[Point, ...]) -> tuple[Point, ...]:
        from shapely.geometry import Polygon

        if not Polygon(v).is_valid or Polygon(v).area <= 0:
            raise ValueError("zone polygon must be simple (no self-crossing) with a non-zero area")
        return v


class LineConfig(_Strict):
    name: str = Field(pattern=f"^{STREAM_ID}$")
    start: Point
    end: Point

    @model_validator(mode="after")
    def _length(self) -> LineConfig:
        if self.start == self.end:
            raise ValueError(f"line {self.name}: start and end are the same point")
        return self


def parse_zone(text: str) -> dict[str, Any]:
    """`NAME:x,y;x,y;x,y[;...]` (the CLI's form) -> a ZoneConfig mapping."""
    name, _, pts = text.partition(":")
    return {"name": name, "polygon": [_point(p) for p in pts.split(";") if p.strip()]}


def parse_line(text: str) -> dict[str, Any]:
    """`NAME:x1,y1;x2,y2` -> a LineConfig mapping (crossing left-to-right of start->end is `in`)."""
    name, _, pts = text.partition(":")
    points = [_point(p) for p in pts.split(";") if p.strip()]
    if len(points) != 2:
        raise ValueError(f"line {text!r}: give NAME:x1,y1;x2,y2")
    return {"name": name, "start": points[0], "end": points[1]}


def _point(text: str) -> Point:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"point {text!r} is not x,y") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"point {text!r} is not finite")
    return x, y
