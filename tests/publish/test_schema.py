import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fpnstream.core.frames import Detections, FrameMeta
from fpnstream.publish.schema import FIELDS, SchemaError, decode_entry, encode_entry

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def detections(draw):
    n = draw(st.integers(0, 20))
    boxes = np.array(draw(st.lists(st.tuples(finite, finite, finite, finite), min_size=n, max_size=n)), np.float32).reshape(n, 4)
    scores = np.array(draw(st.lists(st.floats(0, 1, width=32), min_size=n, max_size=n)), np.float32)
    labels = np.array(draw(st.lists(st.integers(0, 1000), min_size=n, max_size=n)), np.int64)
    names = tuple(draw(st.lists(st.text(max_size=12), min_size=n, max_size=n)))
    return Detections(boxes, scores, labels, names)


@settings(max_examples=150, deadline=None)
@given(
    dets=detections(),
    stream=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,20}", fullmatch=True),
    index=st.integers(0, 2**53),
    pts=st.one_of(st.none(), st.floats(0, 1e7, allow_nan=False)),
    ts=st.floats(1e9, 4e9, allow_nan=False),
    size=st.tuples(st.integers(1, 16384), st.integers(1, 16384)),
)
def test_every_entry_round_trips(dets, stream, index, pts, ts, size):
    meta = FrameMeta(stream, index, pts, ts, *size)
    raw = encode_entry(meta, dets, "fasterrcnn_resnet50_fpn", ts + 0.25, run=3)
    assert set(raw) == set(FIELDS) | {"run"} and all(isinstance(v, str) for v in raw.values())
    # Redis hands fields back as bytes.
    doc = decode_entry({k.encode(): v.encode() for k, v in raw.items()})
    assert (doc["stream"], doc["frame"], doc["pts"], doc["ts"]) == (stream, index, pts, ts)
    assert (doc["width"], doc["height"]) == size and doc["run"] == 3
    assert doc["latency_ms"] == pytest.approx(250.0, abs=1e-3)
    assert len(doc["detections"]) == len(dets)
    for d, box, score, label, name in zip(doc["detections"], dets.boxes, dets.scores, dets.labels, dets.names):
        assert d["box"] == [float(v) for v in box] and d["score"] == float(score)
        assert d["label"] == int(label) and d["name"] == name


def _stdlib_detections_json(dets: Detections) -> str:
    """What the entry's `detections` field was before orjson: the stdlib's compact json.dumps."""
    tids = dets.track_ids if dets.track_ids is not None else [None] * len(dets)
    return json.dumps([{"box": [float(v) for v in b], "score": float(s), "label": int(lab), "name": n,
                        "track_id": None if t is None or t < 0 else int(t)}
                       for b, s, lab, n, t in zip(dets.boxes, dets.scores, dets.labels, dets.names, tids)],
                      separators=(",", ":"))


@settings(max_examples=150, deadline=None)
@given(dets=detections(), tracked=st.booleans())
def test_detections_field_holds_the_values_the_stdlib_json_wrote(dets, tracked):
    """The fast encoder (orjson) must not change the schema: the same JSON values for any
    boxes, scores, labels, names (unicode included) and track ids."""
    if tracked:
        dets = Detections(dets.boxes, dets.scores, dets.labels, dets.names, np.arange(len(dets), dtype=np.int64) - 1)
    fast = encode_entry(FrameMeta("s", 0, None, 1e9, 8, 8), dets, "m", 1e9)["detections"]
    assert json.loads(fast) == json.loads(_stdlib_detections_json(dets))


def test_detections_field_is_byte_for_byte_what_the_stdlib_json_wrote():
    """For what a detector gives (pixel boxes, scores in [0, 1], ASCII class names) even the
    bytes are the same: a reader comparing strings sees no change."""
    rng = np.random.default_rng(7)
    xy = rng.uniform(0, 1900, (40, 2)).astype(np.float32)
    dets = Detections(np.hstack([xy, xy + rng.uniform(1, 300, (40, 2)).astype(np.float32)]),
                      rng.uniform(0.05, 1, 40).astype(np.float32), rng.integers(1, 91, 40),
                      tuple(rng.choice(["person", "car", "traffic light", "N/A"], 40)),
                      rng.integers(-1, 50, 40))
    fast = encode_entry(FrameMeta("s", 0, None, 1e9, 8, 8), dets, "m", 1e9)["detections"]
    assert fast == _stdlib_detections_json(dets)


def test_unknown_version_and_missing_fields_rejected():
    meta = FrameMeta("s", 0, 0.0, 1.7e9, 2, 2)
    raw = encode_entry(meta, Detections.empty(), "m", 1.7e9)
    with pytest.raises(SchemaError, match="version"):
        decode_entry({**raw, "v": "2"})
    raw.pop("detections")
    with pytest.raises(SchemaError, match="detections"):
        decode_entry(raw)


def test_detections_json_shape():
    dets = Detections(np.array([[1, 2, 3, 4]], np.float32), np.array([0.9], np.float32), np.array([1]), ("person",))
    raw = encode_entry(FrameMeta("s", 3, None, 1.7e9, 10, 10), dets, "m", 1.7e9)
    assert json.loads(raw["detections"]) == [{"box": [1.0, 2.0, 3.0, 4.0], "score": pytest.approx(0.9), "label": 1,
                                              "name": "person", "track_id": None}]
    assert raw["pts"] == ""


def test_tracked_detections_carry_their_track_id_and_null_off_track():
    dets = Detections(np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32), np.array([0.9, 0.8], np.float32),
                      np.array([1, 1]), ("person", "person"), track_ids=np.array([7, -1]))
    doc = decode_entry(encode_entry(FrameMeta("s", 3, None, 1.7e9, 10, 10), dets, "m", 1.7e9))
    assert [d["track_id"] for d in doc["detections"]] == [7, None]
    with pytest.raises(ValueError, match="misaligned"):
        Detections(dets.boxes, dets.scores, dets.labels, dets.names, track_ids=np.array([1]))


def test_misaligned_detections_rejected():
    with pytest.raises(ValueError, match="misaligned"):
        Detections(np.zeros((2, 4), np.float32), np.zeros(1, np.float32), np.zeros(2, np.int64), ("a", "b"))


def test_entries_from_before_run_numbers_read_as_run_one():
    raw = encode_entry(FrameMeta("s", 4, 0.0, 1.7e9, 2, 2), Detections.empty(), "m", 1.7e9)
    del raw["run"]
    assert decode_entry(raw)["run"] == 1
