"""Does compiling the box head and predictor pay on a CPU? Three detectors in one process
on the same decoded frames, interleaved rounds, one thread: fp32 eager, compiled backbone +
RPN head (what `model.compile` does on a CPU), and that plus the heads on padded rows (what
it does on CUDA).

    .venv/bin/python benchmarks/compile_heads.py [--rounds 6]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fpnstream.config.settings import ModelConfig
from fpnstream.detection.acceleration import PaddedRows
from fpnstream.detection.model import Detector
from fpnstream.devtools.bench import _decode, make_inputs
from fpnstream.devtools.synthetic import synthetic_frame
from fpnstream.devtools.testing import make_firing_model, save_checkpoint

MODEL = "fasterrcnn_mobilenet_v3_large_320_fpn"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--frames", type=int, default=8)
    a = ap.parse_args()
    w, h = 640, 360
    with tempfile.TemporaryDirectory() as tmp:
        (clip,) = make_inputs(Path(tmp), 1, a.frames, w, h)
        frames = _decode(clip, a.frames)
        ckpt = save_checkpoint(make_firing_model(MODEL, [synthetic_frame(i, w, h) for i in (0, 9)], seed=7),
                               Path(tmp) / "m.pth")
        base = ModelConfig(name=MODEL, weights=str(ckpt), device="cpu", score_threshold=0.5, torch_threads=1, lanes=1,
                           warmup_sizes=(f"{w}x{h}",))
        eager = Detector.from_config(base)
        compiled = Detector.from_config(base.model_copy(update={"compile": True}))
        heads = Detector.from_config(base.model_copy(update={"compile": True}))
        roi, step = heads.model.roi_heads, heads.model.rpn.post_nms_top_n()
        roi.box_head = PaddedRows(torch.compile(roi.box_head, dynamic=False), step)
        roi.box_predictor = PaddedRows(torch.compile(roi.box_predictor, dynamic=False), step)
        runs = {"fp32 eager": eager, "compiled backbone + RPN head": compiled, "... + box head + predictor": heads}
        for det in runs.values():
            for f in frames[:2]:
                det.detect([f])  # the heads compile here
        ms: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(a.rounds):
            for name, det in runs.items():
                t0 = time.perf_counter()
                for f in frames:
                    det.detect([f])
                ms[name].append((time.perf_counter() - t0) * 1000 / len(frames))
        for name, v in ms.items():
            print(f"{name:30s} median {statistics.median(v):6.1f} ms/frame, x eager per round "
                  f"{[round(x / y, 2) for x, y in zip(v, ms['fp32 eager'])]}")


if __name__ == "__main__":
    main()
