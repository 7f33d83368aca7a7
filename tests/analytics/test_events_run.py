"""Line and zone events through `fpnstream run` on Ray, end to end, on a scene whose
objects' trajectories are known: N objects cross a line -> exactly N `cross` events, each
in its true direction. Detection here is OpenCV's connected components on the decoded
pixels (`model.plugin`, fpnstream.devtools.blobs), as no weights that localise objects can
be had; decode, batching, tracking (trackers' ByteTrack), geometry and fenced publishing
are the product's."""

from __future__ import annotations

import json

import yaml

from fpnstream.devtools.synthetic import MovingSquare, scene_drawer, write_clip
from fpnstream.publish.keys import events_key, preview_key, stream_key
from fpnstream.publish.schema import decode_entry
from tests.conftest import run_cli

W, H, LINE_X = 160, 120, 80
# Left to right (anchor x grows past LINE_X): A, C, E; right to left: B, D. They never overlap.
SCENE = {
    "A": MovingSquare(first=0, last=45, x=10, y=10, vx=3, vy=0),
    "B": MovingSquare(first=5, last=50, x=140, y=40, vx=-3, vy=0),
    "C": MovingSquare(first=20, last=65, x=10, y=70, vx=3, vy=0),
    "D": MovingSquare(first=40, last=85, x=140, y=95, vx=-3, vy=0),
    "E": MovingSquare(first=50, last=89, x=10, y=25, vx=3, vy=0),
}


def true_crossings() -> list[tuple[int, str]]:
    """(frame, direction) per object from its trajectory: the first frame its box's bottom
    centre is past the line (a centre exactly on it has not crossed yet). The line runs
    from the top to the bottom of the image, so moving to the right of the image is `out`,
    to the left `in` (README, "Tracks, zones and line counts")."""
    out = []
    for obj in SCENE.values():
        side = 0.0
        for f in range(obj.first, obj.last + 1):
            x = obj.box(f)[0] + obj.size / 2 - LINE_X
            if x == 0:
                continue
            if side and (x > 0) != (side > 0):
                out.append((f, "out" if x > 0 else "in"))
            side = x
    return sorted(out)


def test_n_objects_crossing_a_line_give_exactly_n_cross_events(tmp_path, redis_proc):
    clip = write_clip(tmp_path / "door.mp4", frames=90, width=W, height=H, draw=scene_drawer(list(SCENE.values())))
    right_half = [[LINE_X, 0], [W, 0], [W, H], [LINE_X, H]]
    cfg = {
        "sources": [{"id": "door", "uri": str(clip),
                     "lines": [{"name": "door", "start": [LINE_X, 0], "end": [LINE_X, H]}],
                     "zones": [{"name": "inside", "polygon": right_half}]}],
        "model": {"plugin": "fpnstream.devtools.blobs:blob_detector", "score_threshold": 0.5},
        "tracking": {"enabled": True, "params": {"lost_track_buffer": 5}},
        "batch": {"max_size": 4},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_cli("run", "--config", str(tmp_path / "cfg.yaml"), "--redis-url", redis_proc.url,
                   "--redis-prefix", "ev", "--metrics-port", "0", "--num-actors", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stream worker(s) ready" in proc.stderr  # through Ray
    client = redis_proc.client()
    frames = [decode_entry(f) for _, f in client.xrange(stream_key("ev", "door"))]
    assert [d["frame"] for d in frames] == list(range(90))
    events = [{k.decode(): v.decode() for k, v in f.items()} for _, f in client.xrange(events_key("ev", "door"))]

    crosses = [e for e in events if e["kind"] == "cross"]
    expected = true_crossings()
    assert len(expected) == len(SCENE) == 5
    assert sorted(e["direction"] for e in crosses) == sorted(d for _, d in expected)  # 2 in, 3 out
    for e, (frame, direction) in zip(sorted(crosses, key=lambda e: int(e["frame"])), expected):
        assert e["direction"] == direction and abs(int(e["frame"]) - frame) <= 1, (e, frame)
        assert e["where"] == "door" and e["name"] == "object"
    assert len({e["track_id"] for e in crosses}) == 5  # one track per object, none split or merged

    # The zone (right of the line): every object enters it once; the two that walk out of it
    # to the left leave it exactly when they cross.
    enters = [e for e in events if e["kind"] == "enter"]
    assert sorted(e["track_id"] for e in enters) == sorted(e["track_id"] for e in crosses)
    exits_by_track = {}
    for e in (e for e in events if e["kind"] == "exit"):
        exits_by_track.setdefault(e["track_id"], []).append(int(e["frame"]))
    assert all(len(v) == 1 for v in exits_by_track.values())
    for e in (e for e in crosses if e["direction"] == "in"):
        assert exits_by_track[e["track_id"]] == [int(e["frame"])]
    # The preview snapshot shows the line's counts as of its batch: at least the crossings up
    # to its frame, at most those up to the end of its batch (batch.max_size frames on).
    snap = client.hgetall(preview_key("ev", "door"))
    shown, line = int(snap[b"frame"]), json.loads(snap[b"analytics"])["lines"][0]
    for direction in ("in", "out"):
        upto = lambda last: sum(1 for e in crosses if e["direction"] == direction and int(e["frame"]) <= last)
        assert upto(shown) <= line[direction] <= upto(shown + 3), (direction, shown, line)
    # Each detection on the published frames carries the track id its events name.
    published_ids = {d.get("track_id") for doc in frames for d in doc["detections"]} - {None}
    assert {int(e["track_id"]) for e in crosses} <= published_ids
