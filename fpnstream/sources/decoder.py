"""PyAV decoding of one source into `Frame`s. Knows nothing of queues, Ray or reconnects."""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterator

import av
from av.video.reformatter import VideoReformatter

from fpnstream.config.settings import DecodeConfig
from fpnstream.core.errors import SourceError
from fpnstream.core.frames import Frame
from fpnstream.core.redact import redact_text
from fpnstream.sources.spec import SourceSpec

log = logging.getLogger(__name__)

# Above this a frame is almost certainly a corrupt header, and one RGB copy would be > 1 GiB.
MAX_PIXELS = 16384 * 16384 // 2
# A realtime file waits at most this long for its next frame; longer is a timestamp jump.
MAX_PACING_GAP_S = 2.0
# Past this many undecodable packets the input is garbage, not a damaged video.
MAX_CORRUPT_PACKETS = 100


class FrameSampler:
    """Keeps frames so the output rate is at most `fps`, judged by timestamps, not by counting."""

    def __init__(self, fps: float | None) -> None:
        self._period = 1.0 / fps if fps else None
        self._next: float | None = None

    def keep(self, t: float) -> bool:
        if self._period is None:
            return True
        # A small tolerance so 30 -> 10 fps keeps exactly every third frame despite float PTS.
        slack = self._period * 1e-3
        # Timestamps that went back past the last kept frame (an encoder restarted behind a
        # UDP/SRT feed, a looping RTSP server, TS segments back to back) start a new timeline:
        # waiting for them to pass the old one dropped every frame for as long as it had run.
        # (More than a period before it: a little jitter is no new timeline.)
        went_back = self._next is not None and t < self._next - 2 * self._period
        if self._next is None or went_back or t >= self._next - slack:
            # Re-anchor after a jump (seek, PTS discontinuity) instead of bursting to catch up.
            base = self._next if self._next is not None and not went_back and t - self._next < self._period else t
            self._next = base + self._period
            return True
        return False


class NoPacer:
    """Frames as fast as they decode (files) or arrive (live sources)."""

    slept_s = 0.0

    def wait_until(self, t: float) -> None:
        pass


class Pacer(NoPacer):
    """Plays a file at its recorded rate: frame time t is released t - t0 after the first."""

    def __init__(self, sleep: Callable[[float], None] = time.sleep) -> None:
        self._origin: tuple[float, float] | None = None
        self._last_t = 0.0
        self._sleep = sleep
        self.slept_s = 0.0  # so timing of the decode stage can leave the pacing out

    def wait_until(self, t: float) -> None:
        now = time.monotonic()
        went_back, self._last_t = self._origin is not None and t < self._last_t, t
        # First frame, or timestamps went back (segments back to back): played from here.
        # Measured against the origin alone, a timeline that restarted after it was behind
        # the clock until it passed the old one, so it was played unpaced.
        if self._origin is None or went_back:
            self._origin = (now, t)
            return
        delay = self._origin[0] + (t - self._origin[1]) - now
        if delay > MAX_PACING_GAP_S:  # a jump in the timestamps, not a frame interval: go on from here
            self._origin = (now, t)
            return
        if delay > 0:
            self._sleep(delay)
            self.slept_s += delay


class VideoDecoder:
    """Opens one source with PyAV and yields RGB frames.

    After iteration, `warning` says whether the video ended before its declared length.
    """

    def __init__(
        self, spec: SourceSpec, cfg: DecodeConfig, clock: Callable[[], float] = time.time, start_index: int = 0,
        gap: bool = False, lease: str = "",
    ) -> None:
        """`start_index` resumes a stream: a file skips the frames before it (they were
        published already), a live stream numbers its frames from it. `lease`: the
        ownership token of the claim this decoder reads for, stamped on every frame."""
        self.spec = spec
        self.lease = lease
        self._cfg = cfg
        self._clock = clock
        self._container: av.container.InputContainer | None = None
        self.start_index = start_index
        self.next_index = start_index if spec.live else 0
        self.frames_decoded = 0  # decoded at or after start_index
        self.expected_frames: int | None = None  # a file's length, once open (None: unknown)
        self._gap = gap
        self.frames_sampled_out = 0
        self.pacer: NoPacer = NoPacer()
        self.warning: str | None = None

    def reopened(self) -> VideoDecoder:
        """A fresh connection to the same live source; frame indices go on from here and its
        first frame is marked as following a gap."""
        return VideoDecoder(self.spec, self._cfg, self._clock, start_index=self.next_index, gap=True, lease=self.lease)

    def open(self) -> None:
        spec = self.spec
        if not spec.live and spec.local:
            path = spec.path
            if not path.exists():
                raise SourceError(f"source {spec.stream_id}: file not found: {path}")
            if not path.is_file():
                raise SourceError(f"source {spec.stream_id}: not a regular file: {path}")
            if path.stat().st_size == 0:
                raise SourceError(f"source {spec.stream_id}: file is empty (0 bytes): {path}")
        options = {}
        if spec.uri.lower().startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = self._cfg.rtsp_transport
        started = time.monotonic()
        try:
            # Network reads time out, a file served over http(s) too; a local file does not.
            self._container = av.open(
                str(spec.path) if spec.local else spec.uri,
                mode="r",
                options=options,
                timeout=(self._cfg.open_timeout_s, min(self._cfg.read_timeout_s, self._cfg.stall_timeout_s))
                if spec.live or not spec.local else None,
            )
        except av.error.FileNotFoundError:
            raise SourceError(f"source {spec.stream_id}: not found: {spec.display}") from None
        except av.error.PermissionError:
            raise SourceError(f"source {spec.stream_id}: permission denied: {spec.display}") from None
        except (av.error.FFmpegError, OSError) as e:
            reason = _reason(e)
            if "401" in reason or "403" in reason or "Unauthorized" in reason:
                raise SourceError(
                    f"source {spec.stream_id}: authorization failed for {spec.display} (wrong or missing credentials)"
                ) from None
            if spec.live and time.monotonic() - started >= 0.9 * self._cfg.open_timeout_s:
                raise SourceError(
                    f"source {spec.stream_id}: no video from {spec.display} within {self._cfg.open_timeout_s:g} s "
                    "(a slow first keyframe needs a larger decode.open_timeout_s)"
                ) from None
            if not spec.live and isinstance(e, (EOFError, av.error.EOFError)):
                raise SourceError(
                    f"source {spec.stream_id}: {spec.display} ends before its header is complete (truncated file?)"
                ) from None
            if isinstance(e, av.error.InvalidDataError):
                raise SourceError(
                    f"source {spec.stream_id}: not a readable video (FFmpeg could not parse {spec.display})"
                ) from None
            raise SourceError(f"source {spec.stream_id}: cannot open {spec.display}: {reason}") from None
        if not self._container.streams.video:
            self.close()
            raise SourceError(f"source {spec.stream_id}: {spec.display} has no video stream")
        stream = self._container.streams.video[0]
        ctx = stream.codec_context
        if ctx is None or stream.codec_context.codec is None:
            self.close()
            raise SourceError(f"source {spec.stream_id}: unsupported video codec in {spec.display}")
        if ctx.width * ctx.height > MAX_PIXELS:
            self.close()
            raise SourceError(f"source {spec.stream_id}: absurd frame size {ctx.width}x{ctx.height}")
        # Slice threads, not frame threads: frame threading delays output by one frame per
        # thread (latency on live streams) and swallows frames around a corrupt packet.
        stream.thread_type = "SLICE"
        if not spec.live:  # for progress and ETA: the header's frame count, else duration x rate
            rate = float(stream.average_rate) if stream.average_rate else 0.0
            seconds = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0
            self.expected_frames = stream.frames or (round(seconds * rate) if seconds and rate else None)

    def frames(self) -> Iterator[Frame]:
        if self._container is None:
            self.open()
        container = self._container
        assert container is not None
        stream = container.streams.video[0]
        sampler = FrameSampler(self.spec.fps)
        rate = float(stream.average_rate) if stream.average_rate else None
        timed = bool(stream.time_base)  # a frame's time_base is its stream's
        last_pts: float | None = None
        corrupt = 0
        last_frame_at = time.monotonic()
        pace = self.pacer = Pacer() if self.spec.realtime and not self.spec.live else NoPacer()
        # One converter for the whole stream: `av_frame.to_ndarray(format=...)` builds a new
        # swscale context (and, by default, its thread pool) for every frame: ~0.2-0.3 ms of
        # CPU per 640x360 frame, more than the rest of the pipeline's per-frame work. The
        # pixels are the same (same conversion, same settings); FFmpeg re-initialises the
        # context itself if a stream changes size. One thread: every stream has its own.
        convert = VideoReformatter()
        threads = self._cfg.convert_threads
        try:
            for packet in container.demux(stream):
                if self.spec.live and time.monotonic() - last_frame_at > self._cfg.stall_timeout_s:
                    # Packets keep coming (the socket is alive) but no picture does.
                    raise SourceError(f"source {self.spec.stream_id}: stalled: no frame for {self._cfg.stall_timeout_s:g} s")
                try:
                    av_frames = packet.decode()
                except av.error.InvalidDataError:
                    # One damaged packet costs its frame(s), not the rest of the stream.
                    corrupt += 1
                    if corrupt > MAX_CORRUPT_PACKETS:
                        raise
                    continue
                for av_frame in av_frames:
                    last_frame_at = time.monotonic()
                    index = self.next_index
                    self.next_index += 1
                    if index < self.start_index:
                        continue
                    self.frames_decoded += 1
                    pts = av_frame.time if timed else None  # seconds, computed in C (no Fraction per frame)
                    t = pts if pts is not None else (index / rate if rate else float(index))
                    last_pts = pts if pts is not None else last_pts
                    if not sampler.keep(t):
                        self.frames_sampled_out += 1
                        continue
                    pace.wait_until(t)
                    image = convert.reformat(av_frame, format="rgb24", threads=threads).to_ndarray()
                    gap, self._gap = self._gap, False
                    yield Frame(image=image, stream_id=self.spec.stream_id, index=index, pts=pts,
                                capture_ts=self._clock(), gap=gap, lease=self.lease)
        except av.error.FFmpegError as e:
            if self.spec.live:
                raise SourceError(f"source {self.spec.stream_id}: read failed: {_reason(e)}") from None
            self.warning = (
                f"source {self.spec.stream_id}: decoding stopped after {self.next_index} frames "
                f"({_reason(e)}); the file is probably truncated or corrupt"
            )
            self._fail_if_cut_off()
        else:
            if not self.spec.live:
                self.warning = _completeness_warning(self.spec, self.next_index, container, stream, last_pts, rate)
                self._fail_if_cut_off()
                if corrupt and self.warning is None:
                    self.warning = f"source {self.spec.stream_id}: skipped {corrupt} corrupt packet(s)"
        finally:
            self.close()

    def _fail_if_cut_off(self) -> None:
        """A file over the network that stops short was most likely cut off (a dropped
        connection, a read timeout), not truncated where it is stored: the stream fails,
        so that it is not taken for finished and the same command resumes it."""
        if self.warning is not None and not self.spec.local:
            raise SourceError(f"{self.warning}, or its connection was cut; the same command resumes it "
                              f"after its last published frame")

    def close(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # closing a half-broken container must not mask the real error
                pass
            self._container = None


def _reason(e: BaseException) -> str:
    msg = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return redact_text(str(msg))


def _completeness_warning(spec: SourceSpec, decoded_to: int, container: av.container.InputContainer,
                          stream: av.video.stream.VideoStream, last_pts: float | None, rate: float | None) -> str | None:
    """Compare what was decoded (indices below `decoded_to`) with what the container header
    declared (frame count or duration). MPEG-TS declares neither, so a cut TS file cannot be
    told from a short one."""
    declared = stream.frames or 0
    if declared and decoded_to < declared:
        return (
            f"source {spec.stream_id}: video ended early: decoded {decoded_to} of "
            f"{declared} declared frames (file truncated?)"
        )
    if stream.duration and stream.time_base:
        start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        expected_end: float | None = start + float(stream.duration * stream.time_base)
    elif container.duration and container.format.name not in ("mpegts",):
        expected_end = container.duration / av.time_base  # header duration (e.g. Matroska)
    else:
        expected_end = None
    if expected_end is not None and last_pts is not None and rate:
        if last_pts + 1.0 / rate < expected_end - 2.0 / rate:
            return (
                f"source {spec.stream_id}: video ended early at {last_pts:.2f}s of "
                f"{expected_end:.2f}s declared (file truncated?)"
            )
    if decoded_to == 0:
        return f"source {spec.stream_id}: no decodable frames in {spec.display}"
    return None
