"""CPU per frame of the host side: `fpnstream bench --feed`'s two runs (decoding alone, the
pipeline with the zero-cost stand-in detector) measured with getrusage, which is steadier
on a noisy machine than frames/s. Also page faults and kernel time per frame.

    .venv/bin/python benchmarks/feed_cpu.py --size 640x360 --clips 8 --frames 600 --runs 4

The first pipeline run of the process pays the imports (torch among them): read the rest.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
from pathlib import Path

from fpnstream.devtools.bench import make_inputs
from fpnstream.devtools.feed import decode_alone, pipeline_fed
from fpnstream.publish.connection import EmbeddedRedis


def usage() -> tuple[float, float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_stime, r.ru_minflt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_inputs(Path(tmp), a.clips, a.frames, w, h)
        decode_alone(paths)  # page cache and PyAV's first use
        n = a.clips * a.frames
        with EmbeddedRedis(Path(tmp) / "redis") as server:
            for _ in range(a.runs):
                u0 = usage()
                alone = decode_alone(paths)
                u1 = usage()
                fed, _, stages = pipeline_fed(paths, a.batch_size, 0.002, server.url)
                u2 = usage()
                per = [(1000 * (y[0] - x[0]) / n, 1000 * (y[1] - x[1]) / n, (y[2] - x[2]) / n)
                       for x, y in ((u0, u1), (u1, u2))]
                print(f"decode alone {alone:.0f} frames/s, {per[0][0]:.3f} ms CPU/frame (kernel {per[0][1]:.3f}, "
                      f"{per[0][2]:.0f} faults) | pipeline {fed:.0f} frames/s, {per[1][0]:.3f} ms CPU/frame "
                      f"(kernel {per[1][1]:.3f}, {per[1][2]:.0f} faults), publish {stages.get('publish')} ms/frame "
                      f"| ratio {fed / alone:.3f}", flush=True)


if __name__ == "__main__":
    main()
