"""The freshness rule right before inference, on the frames a batch holds."""

from __future__ import annotations

import numpy as np

from fpnstream.core.frames import Frame
from fpnstream.runtime.freshness import FreshnessPolicy


def live(index: int, ts: float, gap: bool = False, lease: str = "L1", stream: str = "cam") -> Frame:
    return Frame(np.zeros((2, 2, 3), np.uint8), stream, index, None, ts, gap=gap, lease=lease)


def test_a_stale_frame_that_carried_a_reconnect_mark_hands_it_to_the_next_admitted_frame():
    stale = []
    policy = FreshnessPolicy(1.0, is_live=lambda sid: True, on_stale=stale.append, batch_seconds=lambda: 0.2,
                             clock=lambda: 100.0)
    # budget 0.8 s: a frame captured before 99.2 would be stale when published
    first = policy.admit([live(5, 98.0, gap=True), live(6, 99.9), live(7, 99.9)])
    assert [f.index for f in stale] == [5] and [(f.index, f.gap) for f in first] == [(6, True), (7, False)]
    # a mark dropped later in the batch waits for the stream's next batch, and only its own
    # claim carries it (frames of another claim are the next owner's, with their own marks)
    second = policy.admit([live(8, 98.0, gap=True), live(0, 99.9, lease="L2")])
    third = policy.admit([live(9, 99.9), live(10, 99.9)])
    assert [(f.index, f.gap) for f in second] == [(0, False)]
    assert [(f.index, f.gap) for f in third] == [(9, True), (10, False)]
    # a file's frames are never stale and keep their own marks
    files = FreshnessPolicy(1.0, is_live=lambda sid: False, on_stale=stale.append, batch_seconds=lambda: 0.2,
                            clock=lambda: 100.0)
    assert [(f.index, f.gap) for f in files.admit([live(1, 10.0), live(2, 10.0, gap=True)])] == [(1, False), (2, True)]
