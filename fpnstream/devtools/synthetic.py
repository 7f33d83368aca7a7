"""Synthetic test/demo video: moving coloured shapes over a gradient, encoded with PyAV."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

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
    draw: Callable[[int, int, int], np.ndarray] | None = None,
) -> Path:
    """Encode `frames` synthetic frames; returns the path. Container is chosen by suffix.
    `draw(index, width, height)` makes each RGB frame (default: `synthetic_frame`).
    The caller's CPU scheduling is kept (SVT-AV1 would leave it real-time: see scheduling.py)."""
    draw = draw or (lambda i, w, h: synthetic_frame(i, w, h, seed))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with keep_scheduling(), av.open(str(path), mode="w", format=container_format, options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        frame_time_base = 1 / Fraction(fps)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(draw(i, width, height), format="rgb24")
            frame = frame.reformat(format=pix_fmt)
            frame.pts = i
            frame.time_base = frame_time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


@dataclass(frozen=True)
class MovingSquare:
    """A bright square on a dark scene, present from frame `first` to `last` (inclusive),
    its top-left corner at (x, y) + (vx, vy) * (index - first)."""

    first: int
    last: int
    x: float
    y: float
    vx: float
    vy: float
    size: int = 12

    def box(self, index: int) -> tuple[int, int, int, int] | None:
        if not self.first <= index <= self.last:
            return None
        x, y = round(self.x + self.vx * (index - self.first)), round(self.y + self.vy * (index - self.first))
        return x, y, x + self.size, y + self.size


def scene_drawer(objects: Sequence[MovingSquare]) -> Callable[[int, int, int], np.ndarray]:
    """`draw` for `write_clip`: the squares of a scene with known trajectories (tracking tests)."""

    def draw(index: int, width: int, height: int) -> np.ndarray:
        img = np.full((height, width, 3), 16, np.uint8)
        for obj in objects:
            box = obj.box(index)
            if box is not None:
                x1, y1, x2, y2 = (max(0, v) for v in box)
                img[y1:y2, x1:x2] = 235
        return img

    return draw
