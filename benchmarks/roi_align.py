"""torchvision's MultiScaleRoIAlign against fpnstream's GatherRoIAlign on one CPU thread:
same random features and boxes, median of --reps calls, and the largest difference.

    .venv/bin/python benchmarks/roi_align.py [--reps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import OrderedDict

import torch
from torchvision.ops import MultiScaleRoIAlign

from fpnstream.detection.roi_gather import GatherRoIAlign

CASES = {  # name: (FPN level sizes, image size, proposals per image, images)
    "mobilenet-320, 640x360 frame (320x576 in)": ([(10, 18), (10, 18)], (320, 576), 150, 1),
    "mobilenet-320, batch of 4": ([(10, 18), (10, 18)], (320, 576), 150, 4),
    "resnet50 FPN, 1280x720 frame (800x1344 in)": ([(200, 336), (100, 168), (50, 84), (25, 42)], (800, 1344), 1000, 1),
}


def _median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    print("| case | torchvision ms | gather ms | x | max abs difference |\n|---|---|---|---|---|")
    for name, (levels, (h, w), n, images) in CASES.items():
        names = [str(i) for i in range(len(levels))]
        feats = OrderedDict((k, torch.randn(images, 256, fh, fw, generator=gen)) for k, (fh, fw) in zip(names, levels))
        boxes = []
        for _ in range(images):
            x1, y1 = torch.rand(n, generator=gen) * w * 0.8, torch.rand(n, generator=gen) * h * 0.8
            boxes.append(torch.stack([x1, y1, (x1 + torch.rand(n, generator=gen) * w * 0.3).clamp(max=w),
                                      (y1 + torch.rand(n, generator=gen) * h * 0.3).clamp(max=h)], 1))
        shapes = [(h, w)] * images
        ref, fast = MultiScaleRoIAlign(names, 7, 2), GatherRoIAlign(MultiScaleRoIAlign(names, 7, 2))
        diff = (ref(feats, boxes, shapes) - fast(feats, boxes, shapes)).abs().max().item()
        t_ref = _median_ms(lambda: ref(feats, boxes, shapes), a.reps)
        t_fast = _median_ms(lambda: fast(feats, boxes, shapes), a.reps)
        print(f"| {name} | {t_ref:.1f} | {t_fast:.1f} | {t_ref / t_fast:.1f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
