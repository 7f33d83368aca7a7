"""Analytics events: a tracked object entering or leaving a zone, or crossing a line."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class EventKind(str, enum.Enum):
    ENTER = "enter"  # a track's anchor point came inside a zone
    EXIT = "exit"  # ... left it (or the track ended inside it)
    CROSS = "cross"  # a track's anchor point crossed a line


class Direction(str, enum.Enum):
    """Of a line crossing, looking along the line from its `start` to its `end`: `in` from
    the left-hand side to the right-hand side, `out` the other way."""

    IN = "in"
    OUT = "out"


@dataclass(frozen=True, slots=True)
class Event:
    stream_id: str
    frame: int
    ts: float  # the frame's capture time, Unix seconds
    kind: EventKind
    where: str  # zone or line name
    track_id: int
    label: int
    name: str  # class name
    direction: Direction | None = None  # CROSS only

    def to_fields(self, run: int) -> dict[str, str]:
        """The Redis entry (`<prefix>:events:<stream>`), schema v1 like detections."""
        fields = {"v": "1", "stream": self.stream_id, "frame": str(self.frame), "ts": repr(float(self.ts)),
                  "run": str(run), "kind": self.kind.value, "where": self.where, "track_id": str(self.track_id),
                  "label": str(self.label), "name": self.name}
        if self.direction is not None:
            fields["direction"] = self.direction.value
        return fields
