"""Synthetic test/demo video: moving coloured shapes over a gradient, encoded with PyAV."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from fpnstream.core.scheduling import keep_scheduling


def synthetic_frame(index: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """An RGB frame with a few boxes that move with `index`; deterministic for (index, seed)."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    phase = index * 0.05
    img = np.empty((height, width, 3), np.float32)
    img[..., 0] = 0.5 + 0.4 * np.sin(2 * np.pi * (x + phase))
    img[..., 1] = 0.5 + 0.4 * np.cos(2 * np.pi * (y - phase))
    img[..., 2] = 0.5 + 0.4 * np.sin(2 * np.pi * (x + y))
    for k in range(6):
        color = rng.uniform(0, 1, 3)
        bw, bh = int(rng.uniform(0.1, 0.35) * width), int(rng.uniform(0.1, 0.35) * height)
        speed = rng.uniform(1, 4)
        cx = int((rng.uniform(0, 1) * width + index * speed * (k + 1)) % max(width - bw, 1))
        cy = int((rng.uniform(0, 1) * height + index * speed) % max(height - bh, 1))
        img[cy : cy + bh, cx : cx + bw] = color
    noise = rng.normal(0, 0.02, (height, width, 1)).astype(np.float32)
    return (np.clip(img + noise, 0, 1) * 255).astype(np.uint8)


def write_clip(
    path: str | Path,
    frames: int = 60,
    width: int = 320,
    height: int = 240,
    fps: int | Fraction = 30,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    seed: int = 0,
    container_format: str | None = None,
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Encode `frames` synthetic frames; returns the path. Container is chosen by suffix.
    The caller's CPU scheduling is kept (SVT-AV1 would leave it real-time: see scheduling.py)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with keep_scheduling(), av.open(str(path), mode="w", format=container_format, options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        frame_time_base = 1 / Fraction(fps)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(i, width, height, seed), format="rgb24")
            frame = frame.reformat(format=pix_fmt)
            frame.pts = i
            frame.time_base = frame_time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path
