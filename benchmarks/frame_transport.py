"""How should frames reach a detector on another node? Measures the two options on one
machine: shipping decoded RGB frames through Ray's object store, versus shipping the
compressed stream and decoding next to the detector (what fpnstream does).

    .venv/bin/python benchmarks/frame_transport.py [--frames 120] [--size 1280x720]

Prints a Markdown table. The object-store figure is a same-node lower bound: across nodes
the raw frames also cross the network, which the compressed stream does at ~1/100 the size.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import ray

from fpnstream.devtools.synthetic import write_clip


@ray.remote(num_cpus=0)
class Sink:
    def take(self, frames: list) -> int:
        return sum(int(f[0, 0, 0]) for f in frames)  # touch the data so it is really read


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--batch", type=int, default=4)
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.split("x"))
    with tempfile.TemporaryDirectory() as d:
        clip = write_clip(Path(d) / "c.mp4", frames=a.frames, width=w, height=h)
        compressed = clip.stat().st_size
        t = time.perf_counter()
        with av.open(str(clip)) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        decode_s = (time.perf_counter() - t) / len(frames)
    raw = frames[0].nbytes
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    sink = Sink.remote()
    ray.get(sink.take.remote(frames[:1]))  # warm up
    t = time.perf_counter()
    for i in range(0, len(frames), a.batch):
        ray.get(sink.take.remote(frames[i : i + a.batch]))
    store_s = (time.perf_counter() - t) / len(frames)
    ray.shutdown()
    print(f"| {w}x{h}, {len(frames)} frames | per frame |")
    print("|---|---|")
    print(f"| compressed H.264 (synthetic clip) | {compressed / len(frames) / 1024:.1f} KiB |")
    print(f"| decoded RGB | {raw / 1024:.0f} KiB ({raw / (compressed / len(frames)):.0f}x larger) |")
    print(f"| PyAV decode + RGB conversion | {decode_s * 1000:.2f} ms |")
    print(f"| Ray object store hand-off, same node (batch {a.batch}) | {store_s * 1000:.2f} ms |")
    print(f"| raw RGB at 30 fps over a network | {raw * 30 * 8 / 1e6:.0f} Mbit/s per camera |")


if __name__ == "__main__":
    np.random.seed(0)
    main()
