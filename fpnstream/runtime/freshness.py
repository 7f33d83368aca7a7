"""Live frames must be fresh when they are published. A frame goes into a batch, and into
the model, only if its age now plus the recent batch time stays within the limit."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Callable

from fpnstream.core.frames import BatchResult, Frame


class FreshnessPolicy:
    def __init__(self, limit_s: float, is_live: Callable[[str], bool], on_stale: Callable[[Frame], None],
                 batch_seconds: Callable[[], float], clock: Callable[[], float] = time.time) -> None:
        self._limit = limit_s
        self._is_live, self._on_stale = is_live, on_stale
        self._batch_seconds = batch_seconds
        self._clock = clock
        # A reconnect's mark (`gap`) on a frame dropped here: (claim, frame index) per stream,
        # until `carry_gaps` puts it on that claim's next published frame. `admit` runs on the
        # detector's lanes, several at once and in any order, so the mark is handed on where
        # results go in order: the publisher. One per stream: a newer claim's replaces it.
        self._gap_owed: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()

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
                    with self._lock:
                        self._gap_owed[f.stream_id] = (f.lease, f.index)
                self._on_stale(f)
            else:
                fresh.append(f)
        return fresh

    def carry_gaps(self, result: BatchResult) -> BatchResult:
        """On the publisher, in publish order: a mark dropped with a stale frame goes on the
        first later frame of the same claim, so a consumer still learns of the reconnect."""
        if not self._gap_owed:  # the usual case: nothing to look up per frame
            return result
        metas = list(result.metas)
        with self._lock:
            for i, m in enumerate(metas):
                owed = self._gap_owed.get(m.stream_id)
                if owed is not None and owed[0] == m.lease and m.index > owed[1]:
                    del self._gap_owed[m.stream_id]
                    metas[i] = dataclasses.replace(m, gap=True)
        return dataclasses.replace(result, metas=tuple(metas))
