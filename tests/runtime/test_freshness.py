"""The freshness rule right before inference, and the reconnect marks it drops."""

from __future__ import annotations

import numpy as np

from fpnstream.core.frames import BatchResult, Frame, StageTimes
from fpnstream.runtime.freshness import FreshnessPolicy


def live(index: int, ts: float, gap: bool = False, lease: str = "L1", stream: str = "cam") -> Frame:
    return Frame(np.zeros((2, 2, 3), np.uint8), stream, index, None, ts, gap=gap, lease=lease)


def published(policy: FreshnessPolicy, frames: list[Frame]) -> list[tuple[int, bool]]:
    """What the publisher writes for an admitted batch: (index, gap) per entry."""
    result = BatchResult(tuple(f.meta() for f in frames), tuple(None for _ in frames), StageTimes(0, 0, 0))
    return [(m.index, m.gap) for m in policy.carry_gaps(result).metas]


def test_a_stale_frame_that_carried_a_reconnect_mark_hands_it_to_the_next_published_frame():
    stale = []
    policy = FreshnessPolicy(1.0, is_live=lambda sid: True, on_stale=stale.append, batch_seconds=lambda: 0.2,
                             clock=lambda: 100.0)
    # budget 0.8 s: a frame captured before 99.2 would be stale when published
    first = policy.admit([live(5, 98.0, gap=True), live(6, 99.9), live(7, 99.9)])
    assert [f.index for f in stale] == [5] and published(policy, first) == [(6, True), (7, False)]
    # The lanes admit batches in any order, the publisher publishes them in order: batch 2
    # (frame 9) admitted before batch 1 drops its marked frame 8 still gets no mark, and the
    # mark goes on frame 9 when it is published after batch 1, not on a frame before 8.
    early = policy.admit([live(9, 99.9), live(10, 99.9)])
    late = policy.admit([live(8, 98.0, gap=True)])
    assert published(policy, late) == [] and published(policy, early) == [(9, True), (10, False)]
    # only its own claim carries it (another claim's frames are the next owner's, with their
    # own marks), and a newer claim's dropped mark replaces an older one
    policy.admit([live(11, 98.0, gap=True)])
    assert published(policy, [live(0, 99.9, lease="L2")]) == [(0, False)]
    assert published(policy, [live(12, 99.9)]) == [(12, True)] and published(policy, [live(13, 99.9)]) == [(13, False)]
    policy.admit([live(14, 98.0, gap=True), live(1, 98.0, gap=True, lease="L2")])
    assert published(policy, [live(15, 99.9), live(2, 99.9, lease="L2")]) == [(15, False), (2, True)]
    # a file's frames are never stale and keep their own marks
    files = FreshnessPolicy(1.0, is_live=lambda sid: False, on_stale=stale.append, batch_seconds=lambda: 0.2,
                            clock=lambda: 100.0)
    assert [(f.index, f.gap) for f in files.admit([live(1, 10.0), live(2, 10.0, gap=True)])] == [(1, False), (2, True)]
