"""Live frames must be fresh when they are published. A frame goes into a batch, and into
the model, only if its age now plus the recent batch time stays within the limit."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

from fpnstream.core.frames import Frame


class FreshnessPolicy:
    def __init__(self, limit_s: float, is_live: Callable[[str], bool], on_stale: Callable[[Frame], None],
                 batch_seconds: Callable[[], float], clock: Callable[[], float] = time.time) -> None:
        self._limit = limit_s
        self._is_live, self._on_stale = is_live, on_stale
        self._batch_seconds = batch_seconds
        self._clock = clock
        # Streams whose reconnect mark (`gap`) was on a frame dropped here: the stream's next
        # admitted frame carries it instead (the mux does the same for what it drops).
        # Keyed by claim too: a mark owed to one claim is not another claim's to carry.
        self._gap_owed: set[tuple[str, str]] = set()

    def age_budget(self) -> float:
        """How old a live frame may be when it goes into a batch: the limit minus the recent
        detect+publish time, so it is still fresh when published. Never below a quarter of
        the limit: if the model alone is slower than the limit, detect the freshest frames
        rather than none."""
        return max(self._limit - self._batch_seconds(), 0.25 * self._limit)

    def admit(self, frames: list[Frame]) -> list[Frame]:
        """Right before inference: drop live frames that would be stale when published."""
        cutoff = self._clock() - self.age_budget()
        fresh = []
        for f in frames:
            if self._is_live(f.stream_id) and f.capture_ts < cutoff:
                if f.gap:
                    self._gap_owed.add((f.stream_id, f.lease))
                self._on_stale(f)
            elif self._gap_owed and (f.stream_id, f.lease) in self._gap_owed:
                self._gap_owed.discard((f.stream_id, f.lease))
                fresh.append(dataclasses.replace(f, gap=True))
            else:
                fresh.append(f)
        return fresh
