"""Preview snapshots written by the real writer to a real Redis, under a lagging pipeline."""

import time

import numpy as np

from fpnstream.core.frames import BatchResult, Detections, Frame, StageTimes
from fpnstream.core.reports import StreamReport
from fpnstream.publish.keys import preview_key
from fpnstream.publish.snapshots import NoSnapshots, PreviewSnapshots
from fpnstream.config.settings import PreviewConfig


START = time.time()


def frame(i: int, run: int = 0) -> Frame:
    """Frame i of a stream; `run` > 0: the same index in a later run of the stream."""
    return Frame(np.full((48, 64, 3), i, np.uint8), "cam", i, i / 25, START + i / 25 + run * 1000)


def published(snaps, *indices, run: int = 0) -> None:
    frames = [frame(i, run) for i in indices]
    dets = tuple(Detections.empty() for _ in frames)
    snaps.write(BatchResult(tuple(f.meta() for f in frames), dets, StageTimes(0, 0, 0)),
                    {"cam": StreamReport("cam", state="streaming")})


def shown(client) -> int | None:
    v = client.hget(preview_key("p", "cam"), "frame")
    return None if v is None else int(v)


def test_snapshot_keeps_up_when_publishing_lags_behind_the_period(redis_proc):
    client = redis_proc.client()
    snaps = PreviewSnapshots(client, "p", "m", fps=20)  # a 50 ms period
    snaps.offer([frame(0)])
    time.sleep(0.06)
    snaps.offer([frame(1), frame(2)])  # frame 0 is still being detected: keep it
    published(snaps, 0)
    assert shown(client) == 0
    time.sleep(0.06)
    snaps.offer([frame(3)])
    published(snaps, 1, 2)  # older than the held frame: nothing to write
    assert shown(client) == 0
    published(snaps, 3)
    assert shown(client) == 3
    assert client.pttl(preview_key("p", "cam")) > 0  # expires when the job goes away


def test_a_held_frame_that_was_dropped_is_given_up(redis_proc):
    client = redis_proc.client()
    snaps = PreviewSnapshots(client, "p", "m", fps=20)
    snaps.offer([frame(4)])
    published(snaps, 5)  # frame 4 was dropped as stale before detection
    time.sleep(0.06)
    snaps.offer([frame(6)])
    published(snaps, 6)
    assert shown(client) == 6


def test_preview_off_writes_nothing(redis_proc):
    client = redis_proc.client()
    snaps = PreviewSnapshots.from_config(PreviewConfig(fps=0), client, "p", "m")
    assert type(snaps) is NoSnapshots
    snaps.offer([frame(0)])
    published(snaps, 0)
    assert shown(client) is None


def test_a_restarted_stream_never_pairs_an_old_image_with_new_detections(redis_proc):
    client = redis_proc.client()
    snaps = PreviewSnapshots(client, "p", "m", fps=20)
    snaps.offer([frame(2)])
    published(snaps, 2, run=1)  # same index, another run: not the held image
    assert shown(client) is None
    time.sleep(0.06)
    snaps.offer([frame(3, run=1)])
    published(snaps, 3, run=1)
    assert shown(client) == 3
