"""The data that travels between stages: one frozen `Frame`, one aligned `Detections` batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np


@dataclass(frozen=True, slots=True)
class Frame:
    """A decoded frame and everything needed to publish a result for it.

    `index` is the 0-based position in decode order, kept even when frames are sampled
    or dropped, so consumers can line results up with the source.
    """

    image: np.ndarray  # HxWx3 uint8 RGB, converted once at decode time
    stream_id: str
    index: int
    pts: float | None  # seconds, from the stream's time base; None if the container has none
    capture_ts: float  # wall-clock Unix seconds when the frame left the decoder
    gap: bool = False  # first frame after a reconnect: frames were missed before it
    # The ownership token of the claim the frame was decoded under: its entry is written
    # with this fence, so a frame from before a move can never be written as if it were
    # the new owner's (the same worker may own a stream again while old frames drain).
    lease: str = ""

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def meta(self) -> FrameMeta:
        return FrameMeta(self.stream_id, self.index, self.pts, self.capture_ts, self.width, self.height, self.gap,
                         self.lease)


@dataclass(frozen=True, slots=True)
class FrameMeta:
    """A frame without its pixels: what comes back from a detector and goes to Redis."""

    stream_id: str
    index: int
    pts: float | None
    capture_ts: float
    width: int
    height: int
    gap: bool = False
    lease: str = ""  # see Frame.lease; never part of the published entry


@dataclass(frozen=True, slots=True)
class Detections:
    """Aligned arrays for the detections of one frame, in original-frame pixel coordinates."""

    boxes: np.ndarray  # (N, 4) float32, x1 y1 x2 y2
    scores: np.ndarray  # (N,) float32
    labels: np.ndarray  # (N,) int64
    names: tuple[str, ...] = field(default=())
    # (N,) int64 when the stream is tracked: the track id, -1 for a detection on no
    # confirmed track; None when the stream is not tracked.
    track_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.scores)
        if (self.boxes.shape != (n, 4) or len(self.labels) != n or len(self.names) != n
                or (self.track_ids is not None and len(self.track_ids) != n)):
            raise ValueError(
                f"misaligned detections: boxes {self.boxes.shape}, scores {n}, "
                f"labels {len(self.labels)}, names {len(self.names)}"
            )

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), ())

    def to_json_list(self) -> list[dict]:
        # tolist() converts in C, to the same Python floats and ints as float(v) / int(v) per element
        tids = [None] * len(self) if self.track_ids is None else [t if t >= 0 else None for t in self.track_ids.tolist()]
        return [
            {"box": box, "score": score, "label": label, "name": name, "track_id": tid}
            for box, score, label, name, tid in zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist(),
                                                    self.names, tids)
        ]


@dataclass(frozen=True, slots=True)
class StageTimes:
    """Seconds spent per stage on a detector for one batch (reported back to the driver)."""

    preprocess: float
    inference: float
    postprocess: float


@dataclass(frozen=True, slots=True)
class StreamAnalytics:
    """A tracked stream after a batch: its state to save with the batch (JSON, restored when
    the stream moves or the job restarts) and its zones' occupancy by class."""

    state: bytes  # fpnstream.analytics.tracker_state: compressed JSON, never pickle
    occupancy: tuple[tuple[str, str, int], ...] = ()  # (zone, class name, tracks inside)
    # What the preview draws (README, "fpnstream preview"): {"zones": [{name, polygon,
    # inside}], "lines": [{name, start, end, in, out}]}, with the run's counts so far.
    overlay: Mapping | None = None


@dataclass(frozen=True, slots=True)
class BatchResult:
    metas: tuple[FrameMeta, ...]
    detections: tuple[Detections, ...]
    times: StageTimes
    events: tuple = ()  # fpnstream.core.events.Event, in frame order per stream
    analytics: Mapping[str, StreamAnalytics] = field(default_factory=dict)  # tracked streams only
