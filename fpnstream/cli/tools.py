"""The other commands: `bench`, `annotate`, `preview`, `synth`."""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading

from fpnstream.cli.logs import setup_logging
from fpnstream.cli.redis_commands import _redis_session
from fpnstream.cli.run import _install_stop_handlers
from fpnstream.core.errors import ConfigError, FpnstreamError


@contextlib.contextmanager
def progress_bar(what: str):
    """A transient rich progress bar on a terminal (nothing otherwise); yields
    `update(done, total, step="")`."""
    if not sys.stderr.isatty():
        yield lambda done, total=None, step="": None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as bar:
        task = bar.add_task(what, total=None)

        def update(done: int, total: int | None = None, step: str = "") -> None:
            bar.update(task, completed=done, total=total, description=f"{what} {step}".strip())

        yield update


_MAX_SIDE = 8192  # past 8K a synthetic clip only tests how long the machine takes to swap


def _parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    # ASCII digits only: int() also takes "６４０" and "1_000", which no one means as a size.
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
        raise ConfigError(f"--size must look like 640x360, not {text!r}")
    w, h = int(parts[0]), int(parts[1])
    if not (1 <= w <= _MAX_SIDE and 1 <= h <= _MAX_SIDE):
        raise ConfigError(f"--size {text}: each side must be within 1..{_MAX_SIDE}")
    return w, h


_MAX_CLIPS = 256
_MAX_FRAMES = 100_000  # per clip: an hour at 25 fps is 90,000
_MAX_BATCH = 256  # as batch.max_size


def cmd_bench(a: argparse.Namespace) -> int:
    from pathlib import Path

    from fpnstream.devtools.bench import bench

    w, h = _parse_size(a.size)
    if min(a.clips, a.frames, a.batch_size, w, h) < 1:
        raise ConfigError("bench: clips, frames, batch size and size must be positive")
    # Upper bounds too: the clips are written to a temporary folder before anything runs, so
    # a slip of the keyboard (--frames 30000000) filled the disk instead of failing.
    for flag, value, most in (("--clips", a.clips, _MAX_CLIPS), ("--frames", a.frames, _MAX_FRAMES),
                              ("--batch-size", a.batch_size, _MAX_BATCH)):
        if value > most:
            raise ConfigError(f"bench: {flag} must be within 1..{most}")
    if a.rounds < 1:
        raise ConfigError("bench: --rounds must be at least 1")
    if not 0 <= a.load <= 1 or not 0 < a.load_seconds <= 3600:
        raise ConfigError("bench: --load must be within 0..1 and --load-seconds within 0..3600 (> 0)")
    if Path(a.out).exists() and not Path(a.out).is_dir():
        raise ConfigError(f"bench: --out {a.out} is a file; give a folder for bench.json, bench.md, bench.png")
    setup_logging("WARNING")
    if a.feed:
        from fpnstream.devtools.feed import feed_bench, feed_markdown

        with progress_bar("feed bench") as on_step:
            doc = feed_bench(a.clips, a.frames, w, h, a.batch_size, Path(a.out), rounds=a.rounds, on_step=on_step)
        print(feed_markdown(doc))
        return 0
    from fpnstream.devtools.bench import FastMode
    from fpnstream.devtools.bench_report import markdown

    with progress_bar("bench") as on_step:
        doc = bench(a.clips, a.frames, w, h, a.model, a.batch_size, a.redis_url, not a.no_ray, Path(a.out), a.device,
                    FastMode(a.precision, a.channels_last, a.compile, a.openvino, a.gather_roi_align), a.load,
                    a.load_seconds, on_step=on_step)
    print(markdown(doc))
    return 0


def cmd_annotate(a: argparse.Namespace) -> int:
    from pathlib import Path

    from fpnstream.clients.annotate import annotate

    if a.sheet_frames < 0:
        raise ConfigError("--sheet-frames must be >= 0")
    with _redis_session(a) as (client, cfg), progress_bar("annotating") as on_frame:
        report = annotate(client, cfg.redis.prefix, a.stream, Path(a.source), Path(a.out),
                          Path(a.sheet) if a.sheet else None, a.sheet_frames, on_frame)
    print(f"wrote {report.out} ({report.frames} frames, {report.annotated} matched to published entries"
          f"{f', sheet {report.sheet}' if report.sheet else ''})", file=sys.stderr)
    return 0


def cmd_preview(a: argparse.Namespace) -> int:
    from fpnstream.clients.preview import run_preview

    if not 0 <= a.port <= 65535:
        raise ConfigError("--port must be 0..65535")
    setup_logging("INFO")
    stop = threading.Event()
    _install_stop_handlers(stop)
    with _redis_session(a) as (client, cfg):
        run_preview(client, cfg.redis.prefix, a.host, a.port, stop)
    return 0


def cmd_synth(a: argparse.Namespace) -> int:
    from fpnstream.devtools.synthetic import write_clip

    w, h = _parse_size(a.size)
    if not (16 <= w <= 8192 and 16 <= h <= 8192) or not 1 <= a.frames <= _MAX_FRAMES or not 1 <= a.fps <= 1000:
        raise ConfigError(f"synth: size must be 16..8192 per side, frames within 1..{_MAX_FRAMES} and fps within 1..1000")
    if w % 2 or h % 2:  # synth writes 4:2:0 video, whose chroma halves each side
        raise ConfigError(f"synth: width and height must be even (4:2:0 video), not {w}x{h}")
    try:
        path = write_clip(a.out, frames=a.frames, width=w, height=h, fps=a.fps, codec=a.codec)
    except Exception as e:  # PyAV: unknown codec, unwritable folder
        raise FpnstreamError(f"cannot write {a.out}: {e}") from None
    print(f"wrote {path} ({a.frames} frames, {w}x{h} @ {a.fps} fps, {a.codec})", file=sys.stderr)
    return 0
