"""Tracks through `fpnstream run`: parity with the `trackers` library called directly, and
identities and events that survive a worker SIGKILL and a driver restart on Ray."""

from __future__ import annotations

import json
import os
import signal

import av
import numpy as np
import pytest
import torch

from fpnstream.devtools.synthetic import write_clip
from fpnstream.publish.schema import decode_entry
from tests.conftest import (PARITY_MAX_SIZE, PARITY_MIN_SIZE, PARITY_MODEL, SMALL_MODEL, run_cli, start_run,
                            wait_for)
from tests.faults import exactly_once, record
from tests.parity import torchvision_reference

FRAMES = 150


def entries(client, prefix: str, sid: str) -> list[dict]:
    return [decode_entry(f) for _, f in client.xrange(f"{prefix}:detections:{{{sid}}}")]


def events(client, prefix: str, sid: str) -> list[tuple]:
    out = []
    for _, f in client.xrange(f"{prefix}:events:{{{sid}}}"):
        f = {k.decode(): v.decode() for k, v in f.items()}
        out.append((int(f["frame"]), f["kind"], f["where"], int(f["track_id"]), f.get("direction")))
    return out


def track_ids(docs: list[dict]) -> list[tuple[int, list]]:
    return [(d["frame"], [x["track_id"] for x in d["detections"]]) for d in docs]


def test_published_track_ids_equal_the_library_on_torchvision_output(tmp_path, redis_proc, firing_checkpoint):
    """The loop a user would write (torchvision model, then trackers' ByteTrack, frame by
    frame) and fpnstream give the same tracks, up to the ids' names."""
    import supervision as sv
    import trackers

    clip = write_clip(tmp_path / "t.mp4", frames=20, width=160, height=120, seed=5)
    proc = run_cli("run", "--source", f"t={clip}", "--model", PARITY_MODEL, "--weights", str(firing_checkpoint),
                   "--min-size", str(PARITY_MIN_SIZE), "--max-size", str(PARITY_MAX_SIZE), "--score-threshold", "0.5",
                   "--batch-size", "1", "--track", "--redis-url", redis_proc.url, "--metrics-port", "0", "--in-process",
                   timeout=300)  # parity, not a fault: the in-process pool runs the same worker code
    assert proc.returncode == 0, proc.stderr[-3000:]
    docs = entries(redis_proc.client(), "fpnstream", "t")
    with av.open(str(clip)) as c:
        decoded = [(f.to_ndarray(format="rgb24"), float(f.time)) for f in c.decode(video=0)]
    # One intra-op thread, as in each of the worker's lanes: a convolution's sums then add up
    # in the same order, and a detection scored 0.5016 stays on the same side of 0.5.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # nothing runs a forward pass in this process meanwhile
    try:
        ref = torchvision_reference(PARITY_MODEL, firing_checkpoint, [img for img, _ in decoded], box_score_thresh=0.5,
                                    min_size=PARITY_MIN_SIZE, max_size=PARITY_MAX_SIZE)
    finally:
        torch.set_num_threads(threads)
    tracker = trackers.ByteTrackTracker()
    rename: dict[int, int] = {}
    confirmed = 0
    assert [d["frame"] for d in docs] == list(range(len(decoded)))
    for doc, r, (_, pts) in zip(docs, ref, decoded):
        tracked = tracker.update(sv.Detections(xyxy=r["boxes"], confidence=r["scores"], class_id=r["labels"]),
                                 timestamp=pts)
        assert len(doc["detections"]) == len(tracked)
        for det in doc["detections"]:
            box = np.asarray(det["box"], np.float32)
            i = int(np.argmin(np.abs(tracked.xyxy - box).max(axis=1)))
            assert np.abs(tracked.xyxy[i] - box).max() < 0.01
            theirs, ours = int(tracked.tracker_id[i]), det["track_id"]
            assert (theirs == -1) == (ours is None), (doc["frame"], det, theirs)
            if ours is not None:
                confirmed += 1
                assert rename.setdefault(ours, theirs) == theirs, "one of our tracks is two of theirs"
    assert len(set(rename.values())) == len(rename), "two of our tracks are one of theirs"
    assert len(rename) >= 3 and confirmed >= 100, (len(rename), confirmed)  # the checkpoint really fires


@pytest.fixture(scope="module")
def tracked_clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("trk") / "c.mp4", frames=FRAMES, width=96, height=64, seed=21)


def _config(tmp_path, clip) -> str:
    cfg = tmp_path / "zones.yaml"
    cfg.write_text(
        "tracking:\n  enabled: true\n"
        f"sources:\n  - id: c\n    uri: {clip}\n"
        "    zones:\n      - name: left\n        polygon: [[0, 0], [48, 0], [48, 64], [0, 64]]\n"
        "    lines:\n      - name: mid\n        start: [0, 32]\n        end: [96, 32]\n")
    return str(cfg)


def _args(cfg: str, redis_url: str, prefix: str, ckpt) -> list[str]:
    return ["--config", cfg, "--model", SMALL_MODEL, "--weights", str(ckpt), "--min-size", "64", "--max-size", "128",
            "--batch-size", "1", "--redis-url", redis_url, "--redis-prefix", prefix, "--metrics-port", "0"]


@pytest.fixture(scope="module")
def reference_run(tracked_clip, tmp_path_factory, small_checkpoint):
    """The same job without a fault: what every faulted run must publish (in-process: the
    same worker code, without Ray's start-up)."""
    from tests.conftest import RedisProc

    tmp = tmp_path_factory.mktemp("ref")
    server = RedisProc(tmp)
    try:
        proc = run_cli("run", *_args(_config(tmp, tracked_clip), server.url, "ref", small_checkpoint), "--in-process",
                       timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        docs = entries(server.client(), "ref", "c")
        evs = events(server.client(), "ref", "c")
    finally:
        server.stop()
    assert [d["frame"] for d in docs] == list(range(FRAMES))
    assert sum(x is not None for _, ids in track_ids(docs) for x in ids) > 100 and len(evs) >= 5, len(evs)
    return track_ids(docs), evs


def test_worker_sigkill_keeps_track_ids_and_every_event_exactly_once(tmp_path, tracked_clip, reference_run, redis_proc,
                                                                     small_checkpoint):
    client = redis_proc.client()
    proc = start_run(*_args(_config(tmp_path, tracked_clip), redis_proc.url, "tk", small_checkpoint), "--num-actors", "2")
    try:
        wait_for(lambda: client.hlen("tk:workers") == 2 and client.xlen("tk:detections:{c}") >= 40, proc, what="40 frames")
        owner = client.hget("tk:status:{c}", "worker").decode()
        os.kill(json.loads(client.hget("tk:workers", owner))["pid"], signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "its tracks restored" in err
    ids, evs = reference_run
    got = track_ids(entries(client, "tk", "c"))
    record("worker SIGKILL with tracking", **exactly_once([f for f, _ in got], FRAMES),
           track_ids_changed=sum(a != b for a, b in zip(got, ids)), events=len(events(client, "tk", "c")),
           events_expected=len(evs))
    assert got == ids, "a continuing object's track id changed at the move"
    assert events(client, "tk", "c") == evs, "events lost, duplicated or different after the move"


def test_driver_restart_keeps_track_ids_and_every_event_exactly_once(tmp_path, tracked_clip, reference_run, redis_proc,
                                                                     small_checkpoint):
    client = redis_proc.client()
    args = _args(_config(tmp_path, tracked_clip), redis_proc.url, "dr", small_checkpoint)
    proc = start_run(*args)
    try:
        wait_for(lambda: client.xlen("dr:detections:{c}") >= 40, proc, what="40 frames")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    again = run_cli("run", *args, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "its tracks restored" in again.stderr
    ids, evs = reference_run
    got = track_ids(entries(client, "dr", "c"))
    record("driver SIGKILL with tracking, same command again", **exactly_once([f for f, _ in got], FRAMES),
           track_ids_changed=sum(a != b for a, b in zip(got, ids)), events=len(events(client, "dr", "c")),
           events_expected=len(evs))
    assert got == ids
    assert events(client, "dr", "c") == evs
