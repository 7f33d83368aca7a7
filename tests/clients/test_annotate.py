"""`fpnstream annotate` on a real run's output: real clip, real model, real Redis."""

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from fpnstream.clients.annotate import load_entries
from fpnstream.devtools.synthetic import write_clip
from tests.conftest import SMALL_MODEL, reference_frames, run_cli

FRAMES = 12


@pytest.fixture(scope="module")
def published(tmp_path_factory, small_checkpoint):
    """A clip run through `fpnstream run` into a private redis-server."""
    from tests.conftest import RedisProc

    tmp = tmp_path_factory.mktemp("annotate")
    server = RedisProc(tmp, long_lived=True)
    clip = write_clip(tmp / "cam.mp4", frames=FRAMES, width=320, height=240, seed=5)
    proc = run_cli("run", "--source", f"cam={clip}", "--in-process", "--model", SMALL_MODEL, "--weights",
                   str(small_checkpoint), "--score-threshold", "0.9", "--redis-url", server.url, "--metrics-port", "0")
    assert proc.returncode == 0, proc.stderr
    yield server, clip, tmp
    server.stop()


def annotate(server, *args):
    return run_cli("annotate", "--redis-url", server.url, *args, timeout=120)


def outline_pixels(box, width, height):
    """Pixels on the top and left edges of a box: drawn on, inside the box's extent."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, y1 = min(max(x1, 0), width - 1), min(max(y1, 0), height - 1)
    x2, y2 = min(max(x2, 0), width - 1), min(max(y2, 0), height - 1)
    ys = [y1] * (x2 - x1 + 1) + list(range(y1, y2 + 1))
    xs = list(range(x1, x2 + 1)) + [x1] * (y2 - y1 + 1)
    return np.array(ys), np.array(xs)


def test_png_frames_have_boxes_drawn_where_published(published):
    server, clip, tmp = published
    out = tmp / "frames"
    proc = annotate(server, "--source", str(clip), "--stream", "cam", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    pngs = sorted(out.glob("frame_*.png"))
    assert len(pngs) == FRAMES == len(reference_frames(clip))
    entries = load_entries(server.client(), "fpnstream", "cam")
    assert len(entries) == FRAMES
    source = {i: img for i, _, img in reference_frames(clip)}
    boxes_checked = 0
    for index, doc in entries.items():
        drawn = np.asarray(Image.open(out / f"frame_{index:06d}.png").convert("RGB")).astype(int)
        raw = source[index].astype(int)
        assert drawn.shape == raw.shape
        for det in doc["detections"]:
            ys, xs = outline_pixels(det["box"], doc["width"], doc["height"])
            changed = np.abs(drawn[ys, xs] - raw[ys, xs]).sum(axis=1) > 30
            assert changed.mean() > 0.5, f"frame {index}: box {det['box']} not drawn"
            boxes_checked += 1
        if not doc["detections"]:
            assert np.array_equal(drawn, raw)  # nothing published, nothing drawn
    assert boxes_checked > 0
    assert (out / "sheet.png").is_file()


def test_mp4_has_every_frame_and_a_contact_sheet(published):
    server, clip, tmp = published
    out = tmp / "annotated.mp4"
    proc = annotate(server, "--source", str(clip), "--stream", "cam", "--out", str(out), "--sheet-frames", "4")
    assert proc.returncode == 0, proc.stderr
    assert f"{FRAMES} frames" in proc.stderr
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == FRAMES and frames[0].shape == (240, 320, 3)
    source = reference_frames(clip)
    # Lossy, but boxes and labels are far from the source everywhere they were drawn.
    diff = np.mean([np.abs(a.astype(int) - b[2].astype(int)).mean() for a, b in zip(frames, source)])
    assert diff > 3
    sheet = Image.open(tmp / "annotated-sheet.png")
    assert sheet.width > 320 * 2 and sheet.height > 100


@pytest.mark.parametrize("args, message", [
    (["--stream", "nobody"], "no published entries for stream 'nobody'"),
    (["--stream", "cam", "--out-suffix", ".avi"], "--out must end in"),
    (["--stream", "cam", "--wrong-size"], "wrong --source for this stream"),
    (["--stream", "cam", "--missing-source"], "file not found"),
    (["--stream", "cam", "--sheet-folder"], "--sheet must end in .png"),
    (["--stream", "cam", "--out-unwritable"], "cannot create /proc/bad.mp4"),
    (["--stream", "cam", "--out-is-source"], "is the --source video"),  # it truncated the source
    (["--stream", "cam", "--out-is-folder"], "exists and is not a regular file"),
])
def test_bad_input_one_line_error(published, args, message):
    server, clip, tmp = published
    source, out = clip, tmp / "bad.mp4"
    if "--out-suffix" in args:
        args, out = args[:2], tmp / "bad.avi"
    if "--sheet-folder" in args:
        args = [*args[:2], "--sheet", str(tmp)]
    if "--out-unwritable" in args:
        args, out = args[:2], Path("/proc/bad.mp4")
    if "--wrong-size" in args:
        args, source = args[:2], write_clip(tmp / "other.mp4", frames=3, width=160, height=120)
    if "--missing-source" in args:
        args, source = args[:2], tmp / "missing.mp4"
    if "--out-is-source" in args:
        args, source = args[:2], tmp / "copy.mp4"
        source.write_bytes(clip.read_bytes())
        out = source
    if "--out-is-folder" in args:
        args, out = args[:2], tmp / "folder.mp4"
        out.mkdir(exist_ok=True)
    before = source.read_bytes() if source.exists() else None
    proc = annotate(server, "--source", str(source), *args, "--out", str(out))
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert before is None or source.read_bytes() == before  # the source is never touched
    if out.suffix == ".mp4" and out != source and not out.is_dir() and out.parent.exists():
        assert not out.exists(), "a failed run leaves no empty output behind"
