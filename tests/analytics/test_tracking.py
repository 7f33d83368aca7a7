"""The analytics stage as a plain class, fed synthetic detections with known trajectories."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest

from fpnstream.analytics.tracker_state import StateError
from fpnstream.analytics.tracking import StreamAnalyzer
from fpnstream.config.analytics import LineConfig, TrackingConfig, ZoneConfig
from fpnstream.core.events import Direction, EventKind
from fpnstream.core.frames import Detections, FrameMeta

DOOR = LineConfig(name="door", start=(0, 100), end=(400, 100))  # left to right: moving down is `in`
ROOM = ZoneConfig(name="room", polygon=((0, 100), (400, 100), (400, 300), (0, 300)))


def detections(boxes) -> Detections:
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(b)
    return Detections(b, np.full(n, 0.9, np.float32), np.ones(n, np.int64), ("person",) * n)


def walkers(n_down: int, n_up: int, frames: int = 40):
    """n_down people walk down through the door line, n_up walk up, side by side (columns
    60 px apart), 8 px per frame; boxes 30x40, the anchor is a box's bottom centre."""
    for i in range(frames):
        boxes = []
        for k in range(n_down):
            y = 20 + 8 * i
            boxes.append([10 + 60 * k, y - 40, 40 + 60 * k, y])
        for k in range(n_up):
            y = 300 - 8 * i
            x = 10 + 60 * (n_down + k)
            boxes.append([x, y - 40, x + 30, y])
        yield FrameMeta("s", i, i / 30, 1000.0 + i / 30, 400, 300), detections(boxes)


def run(analyzer, frames):
    out = []
    for meta, dets in frames:
        tracked, events = analyzer.process(meta, dets)
        out.append((tracked.track_ids.tolist(), events))
    return out


def test_n_objects_crossing_a_line_give_n_cross_events_with_their_directions():
    analyzer = StreamAnalyzer("s", TrackingConfig(enabled=True), (ROOM,), (DOOR,))
    frames = list(walkers(n_down=3, n_up=2))
    results = run(analyzer, frames[:21])
    # frame 20: the three walking down are at y=180, the two walking up at y=140: all inside
    assert analyzer.occupancy() == (("room", "person", 5),)
    results += run(analyzer, frames[21:])
    events = [e for _, evs in results for e in evs]
    crossings = [e for e in events if e.kind is EventKind.CROSS]
    assert sorted(e.direction for e in crossings) == [Direction.IN] * 3 + [Direction.OUT] * 2
    assert len({e.track_id for e in crossings}) == 5  # one per person, never twice
    assert all(e.where == "door" and e.name == "person" for e in crossings)
    # the three walking down enter at the door and leave at the bottom; the two walking up
    # are inside when first tracked and leave through the door
    kinds = sorted((e.kind.value, e.track_id) for e in events if e.kind is not EventKind.CROSS)
    assert [k for k, _ in kinds].count("enter") == 5 and [k for k, _ in kinds].count("exit") == 5
    assert analyzer.occupancy() == (("room", "person", 0),)  # everyone left: 0, not a stale count


def test_state_saved_mid_stream_and_restored_elsewhere_continues_identically():
    cfg = TrackingConfig(enabled=True)
    frames = list(walkers(n_down=3, n_up=2))
    whole = run(StreamAnalyzer("s", cfg, (ROOM,), (DOOR,)), frames)
    first = StreamAnalyzer("s", cfg, (ROOM,), (DOOR,))
    before = run(first, frames[:15])
    blob = first.save()
    assert isinstance(blob, bytes) and len(blob) < 8000
    second = StreamAnalyzer("s", cfg, (ROOM,), (DOOR,))  # another worker
    second.restore(blob)
    after = run(second, frames[15:])
    key = lambda res: [(ids, [(e.frame, e.kind, e.where, e.track_id, e.direction) for e in evs]) for ids, evs in res]
    assert key(before + after) == key(whole)
    assert any(evs for _, evs in after), "the restored half must see events of its own"


def test_a_saved_state_is_data_only_and_bad_ones_are_refused():
    analyzer = StreamAnalyzer("s", TrackingConfig(enabled=True))
    run(analyzer, list(walkers(1, 0, frames=5)))
    data = json.loads(zlib.decompress(analyzer.save()))
    assert data["tracker"]["attrs"]["tracks"]["__seq__"][0]["__obj__"].startswith("trackers.")
    attrs = {**data["tracker"]["attrs"], "tracks": {"__seq__": [{"__obj__": "os._wrap_close", "attrs": {}}]}}
    evil = {**data, "tracker": {**data["tracker"], "attrs": attrs}}
    for blob in (zlib.compress(json.dumps(evil).encode()), b"not zlib", zlib.compress(b"[1, 2]")):
        fresh = StreamAnalyzer("s", TrackingConfig(enabled=True))
        with pytest.raises(StateError):
            fresh.restore(blob)
    other = StreamAnalyzer("s", TrackingConfig(enabled=True, algorithm="sort"))
    with pytest.raises(StateError, match="another tracker"):
        other.restore(analyzer.save())


def test_a_live_reconnect_whose_timestamps_start_again_keeps_tracking_and_counting():
    """A new connection's PTS start from 0 again. The tracker skips every update older than
    its last one, so it froze (no ids, no events) until the new PTS passed the old; saved
    and restored on another worker, likewise."""
    cfg = TrackingConfig(enabled=True)
    first = list(walkers(n_down=2, n_up=0))
    # The same walk again after a 3 s reconnect: frame indices go on, PTS start at 0.
    again = [(FrameMeta("s", 40 + m.index, m.pts, m.capture_ts + 40 / 30 + 3.0, 400, 300), d)
             for m, d in walkers(n_down=2, n_up=0)]
    for moved in (False, True):
        analyzer = StreamAnalyzer("s", cfg, (ROOM,), (DOOR,))
        before = run(analyzer, first)
        if moved:  # the new connection is opened by another worker, from the saved state
            restored = StreamAnalyzer("s", cfg, (ROOM,), (DOOR,))
            restored.restore(analyzer.save())
            analyzer = restored
        after = run(analyzer, again)
        crossings = lambda res: sorted(e.direction for _, evs in res for e in evs if e.kind is EventKind.CROSS)
        assert crossings(before) == crossings(after) == [Direction.IN] * 2, moved
        tracked_after = sum(i >= 0 for ids, _ in after for i in ids)
        assert tracked_after >= 0.9 * sum(len(ids) for ids, _ in after), moved
