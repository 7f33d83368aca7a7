"""`fpnstream annotate`: a stream's published detections drawn onto its source video.

Entries are matched to frames by index: the same decoder numbers the frames here as it did
in the job, so frame N here is frame N there (also with fps sampling, which keeps the
source's indices). If the stream holds entries from several runs, the newest entry of an
index wins. Every source frame is written, annotated where an entry exists.
"""

from __future__ import annotations

import contextlib

from collections import deque

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import av
import redis
from PIL import Image

from fpnstream.config.settings import DecodeConfig
from fpnstream.publish.draw import contact_sheet, draw_detections

TRAIL_FRAMES = 30  # a tracked object's last positions drawn behind it
from fpnstream.core.errors import FpnstreamError, SinkError
from fpnstream.publish.schema import SchemaError, decode_entry
from fpnstream.publish.keys import stream_key
from fpnstream.sources.decoder import VideoDecoder
from fpnstream.sources.spec import SourceSpec

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov"}


@dataclass(frozen=True)
class AnnotateReport:
    out: Path
    frames: int  # frames written
    annotated: int  # frames that had a published entry
    sheet: Path | None


def load_entries(client: redis.Redis, prefix: str, stream_id: str, page: int = 1000) -> dict[int, dict]:
    """Frame index -> decoded entry, newest entry per index."""
    key = stream_key(prefix, stream_id)
    out: dict[int, dict] = {}
    start = "-"
    try:
        while True:
            entries = client.xrange(key, min=start, count=page)
            for entry_id, fields in entries:
                try:
                    doc = decode_entry(fields)
                except (SchemaError, ValueError):
                    continue
                out[doc["frame"]] = doc
            if len(entries) < page:
                return out
            start = "(" + entries[-1][0].decode()
    except redis.RedisError as e:
        raise SinkError(f"cannot read {key}: {type(e).__name__}: {e}") from None


class _VideoWriter:
    """H.264 MP4 through PyAV; odd sizes are padded by a pixel (yuv420p needs even ones)."""

    def __init__(self, path: Path, rate, width: int, height: int) -> None:
        self._container = av.open(str(path), mode="w")
        self._stream = self._container.add_stream("libx264", rate=rate)
        self._stream.width, self._stream.height = width + width % 2, height + height % 2
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": "20", "preset": "veryfast"}

    def write(self, img: Image.Image) -> None:
        if img.size != (self._stream.width, self._stream.height):
            padded = Image.new("RGB", (self._stream.width, self._stream.height))
            padded.paste(img, (0, 0))
            img = padded
        for packet in self._stream.encode(av.VideoFrame.from_image(img)):
            self._container.mux(packet)

    def close(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()


def _pick(indices: list[int], n: int) -> set[int]:
    if n <= 0 or not indices:
        return set()
    if len(indices) <= n:
        return set(indices)
    step = (len(indices) - 1) / (n - 1) if n > 1 else 0
    return {indices[round(i * step)] for i in range(n)}



def _extend_trails(trails: dict[int, deque], detections: list[dict]) -> None:
    """Each track's recent bottom-centre points; tracks not seen this frame keep theirs."""
    for d in detections:
        tid = d.get("track_id")
        if tid is not None:
            x1, _, x2, y2 = d["box"]
            trails.setdefault(tid, deque(maxlen=TRAIL_FRAMES)).append(((x1 + x2) / 2, y2))

def annotate(client: redis.Redis, prefix: str, stream_id: str, source: Path, out: Path,
             sheet: Path | None = None, sheet_frames: int = 6,
             on_frame: Callable[[int, int | None], None] = lambda done, total: None) -> AnnotateReport:
    entries = load_entries(client, prefix, stream_id)
    if not entries:
        raise SinkError(f"no published entries for stream {stream_id!r} under prefix {prefix!r}")
    as_video = out.suffix.lower() in VIDEO_SUFFIXES
    if out.suffix and not as_video:
        raise FpnstreamError(f"--out must end in {', '.join(sorted(VIDEO_SUFFIXES))} or be a folder, not {out.name!r}")
    if sheet is None and sheet_frames > 0:
        sheet = out.with_name(out.stem + "-sheet.png") if as_video else out / "sheet.png"
    if sheet is not None and sheet.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise FpnstreamError(f"--sheet must end in .png, .jpg or .jpeg, not {sheet.name!r}")
    if as_video and out.exists():
        if not out.is_file():  # a folder, or a FIFO that would block the writer for ever
            raise FpnstreamError(f"--out {out} exists and is not a regular file")
        if source.exists() and out.samefile(source):  # the writer would truncate what is being read
            raise FpnstreamError(f"--out {out} is the --source video: write the annotated copy to another file")
    created = as_video and not out.exists()
    try:
        (out.parent if as_video else out).mkdir(parents=True, exist_ok=True)
        if as_video:  # fail now, not after decoding: PyAV would open it at the first frame
            out.touch()
    except OSError as e:
        raise FpnstreamError(f"cannot create {out}: {e.strerror}") from None
    try:
        return _annotate(entries, stream_id, source, out, as_video, sheet, sheet_frames, on_frame)
    except BaseException:
        if created and out.is_file() and out.stat().st_size == 0:  # no empty file left for a failed run
            out.unlink(missing_ok=True)
        raise


def _annotate(entries: dict[int, dict], stream_id: str, source: Path, out: Path, as_video: bool,
              sheet: Path | None, sheet_frames: int, on_frame: Callable[[int, int | None], None]) -> AnnotateReport:
    decoder = VideoDecoder(SourceSpec(stream_id, str(source), live=False), DecodeConfig())
    decoder.open()
    # Prefer frames with boxes on the sheet: that is what people look at it for.
    with_boxes = sorted(i for i, d in entries.items() if d["detections"]) or sorted(entries)
    chosen = _pick(with_boxes, sheet_frames)
    sheet_images: list[tuple[int, Image.Image, int]] = []
    trails: dict[int, deque] = {}
    writer = None
    written = annotated = 0
    try:
        for frame in decoder.frames():
            doc = entries.get(frame.index)
            if doc is not None and (doc["width"], doc["height"]) != (frame.width, frame.height):
                raise FpnstreamError(
                    f"stream {stream_id!r} was made from {doc['width']}x{doc['height']} frames, but {source} has "
                    f"{frame.width}x{frame.height}: wrong --source for this stream?")
            if doc:
                _extend_trails(trails, doc["detections"])
            img = draw_detections(frame.image, doc["detections"], trails=trails) if doc else Image.fromarray(frame.image)
            annotated += doc is not None
            on_frame(frame.index + 1, decoder.expected_frames)
            if as_video:
                if writer is None:
                    writer = _VideoWriter(out, _rate(source), frame.width, frame.height)
                writer.write(img)
            else:
                img.save(out / f"frame_{frame.index:06d}.png")
            written += 1
            if frame.index in chosen:
                sheet_images.append((frame.index, img, len(doc["detections"]) if doc else 0))
        if writer is not None:
            writer, done = None, writer
            done.close()  # flushes the last packets: it can fail too
    except OSError as e:
        raise FpnstreamError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        decoder.close()
        if writer is not None:  # failed part-way: the first error is the one to tell
            with contextlib.suppress(Exception):
                writer.close()
    if annotated == 0:
        raise SinkError(f"none of the {written} frames of {source} has an entry in stream {stream_id!r}: wrong --source?")
    if sheet is not None and sheet_images:
        contact_sheet([img for _, img, _ in sheet_images],
                      captions=[f"frame {i}: {n} detection(s)" for i, _, n in sheet_images]).save(sheet)
    else:
        sheet = None
    return AnnotateReport(out, written, annotated, sheet)


def _rate(source: Path):
    with av.open(str(source)) as c:
        s = c.streams.video[0]
        return s.average_rate or s.guessed_rate or 25
