"""Per-frame forward time and accuracy of each CPU fast mode against fp32 eager, on the same
decoded frames, with the seeded firing checkpoint (one intra-op thread: one pipeline lane).

    .venv/bin/python benchmarks/cpu_modes.py [--size 640x360] [--model fasterrcnn_mobilenet_v3_large_320_fpn]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

MODES = {
    "fp32 eager": {},
    "channels_last": {"channels_last": True},
    "int8 box head": {"precision": "int8"},
    "compiled": {"compile": True},
    "int8 + channels_last": {"precision": "int8", "channels_last": True},
    "int8 + compiled": {"precision": "int8", "compile": True},
    "int8 + channels_last + compiled": {"precision": "int8", "channels_last": True, "compile": True},
    "openvino backbone": {"backbone_runtime": "openvino"},
    "openvino backbone + compiled RPN head": {"backbone_runtime": "openvino", "compile": True},
    "openvino backbone + int8 box head": {"backbone_runtime": "openvino", "precision": "int8"},
    "bf16 box head": {"precision": "bf16"},
    "gather RoIAlign": {"roi_align": "gather"},
    "openvino backbone + gather RoIAlign": {"backbone_runtime": "openvino", "roi_align": "gather"},
    "openvino backbone + bf16 box head": {"backbone_runtime": "openvino", "precision": "bf16"},
    "openvino backbone + bf16 box head + gather RoIAlign": {"backbone_runtime": "openvino", "precision": "bf16",
                                                            "roi_align": "gather"},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--model", default="fasterrcnn_mobilenet_v3_large_320_fpn")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--out", default="benchmarks/out/cpu_modes.json")
    ap.add_argument("--only", help="comma-separated mode names (default: all)")
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.split("x"))
    from fpnstream.config.settings import ModelConfig
    from fpnstream.detection.accuracy import match_rate
    from fpnstream.detection.model import Detector
    from fpnstream.devtools.bench import _decode, make_inputs
    from fpnstream.devtools.synthetic import synthetic_frame
    from fpnstream.devtools.testing import make_firing_model, save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (clip,) = make_inputs(tmp, 1, a.frames, w, h)
        frames = _decode(clip, a.frames)
        ckpt = save_checkpoint(make_firing_model(a.model, [synthetic_frame(i, w, h) for i in (0, 9)], seed=7),
                               tmp / "m.pth")
        base = ModelConfig(name=a.model, weights=str(ckpt), device="cpu", score_threshold=0.5, torch_threads=1, lanes=1)
        rows, ref = {}, None
        wanted = ["fp32 eager", *a.only.split(",")] if a.only else list(MODES)
        for name, update in ((n, MODES[n]) for n in dict.fromkeys(wanted)):
            cfg = base.model_copy(update={**update, "warmup_sizes": (a.size,)})
            t0 = time.perf_counter()
            det = Detector.from_config(cfg)
            load_s = time.perf_counter() - t0
            out = [det.detect([f]).detections[0] for f in frames[:2]]  # settle
            t0 = time.perf_counter()
            out = [det.detect([f]).detections[0] for f in frames]
            ms = (time.perf_counter() - t0) * 1000 / len(frames)
            ref = ref or out
            rep = match_rate(ref, out, min_score=0.5)
            rows[name] = {"ms_per_frame": round(ms, 1), "load_and_warmup_s": round(load_s, 1),
                          "match_rate": round(rep.rate, 4), "extra": rep.extra, "passes": rep.passed}
            print(f"{name:32s} {ms:7.1f} ms/frame  load+warm-up {load_s:5.1f} s  accuracy {rep.rate * 100:5.1f} % "
                  f"({'passes' if rep.passed else 'FAILS'})", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"size": a.size, "model": a.model, "threads": 1, "modes": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
