"""Tracking quality and cost of fpnstream's analytics stage on synthetic scenes with known
trajectories, scored with `motmetrics` (MOTA, IDF1, ID switches).

The stage is a plain class, so it is fed detections made from the ground truth: boxes with
pixel jitter, missed detections, false positives, objects that cross and hide each other
(the hidden one is not detected), and objects that leave the frame and come back later.

    .venv/bin/python benchmarks/tracking_quality.py [--out benchmarks/out/tracking.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import motmetrics as mm
import numpy as np

from fpnstream.analytics.tracking import StreamAnalyzer
from fpnstream.config.analytics import LineConfig, TrackingConfig, ZoneConfig
from fpnstream.core.frames import Detections, FrameMeta

W, H, FPS = 1280, 720, 30.0


def scene(seed: int, objects: int, frames: int, miss: float, jitter: float, false_pos: float):
    """Yields (gt_ids, gt_boxes, detection boxes, scores) per frame."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform([0, 100], [W, H - 100], (objects, 2))
    vel = rng.uniform(-6, 6, (objects, 2))
    size = rng.uniform([40, 80], [90, 180], (objects, 2))
    away = np.zeros(objects, int)  # frames left outside the frame before coming back
    for _ in range(frames):
        pos += vel + rng.normal(0, 0.3, (objects, 2))
        for k in range(objects):
            if away[k] > 0:
                away[k] -= 1
                if away[k] == 0:  # comes back in where it left, heading inwards
                    vel[k] = -vel[k]
                    pos[k] = np.clip(pos[k], 0, [W, H])
                continue
            if not (0 <= pos[k, 0] <= W and 0 <= pos[k, 1] <= H):
                away[k] = int(rng.integers(20, 90))
        visible = np.flatnonzero(away == 0)
        boxes = np.concatenate([pos[visible] - size[visible] / 2, pos[visible] + size[visible] / 2], axis=1)
        # Occlusion: of two boxes overlapping by more than half of the smaller, the one
        # "behind" (smaller y2) is not detected.
        hidden = set()
        for a in range(len(visible)):
            for b in range(len(visible)):
                if a != b and boxes[a, 3] < boxes[b, 3]:
                    ix = max(0, min(boxes[a, 2], boxes[b, 2]) - max(boxes[a, 0], boxes[b, 0]))
                    iy = max(0, min(boxes[a, 3], boxes[b, 3]) - max(boxes[a, 1], boxes[b, 1]))
                    small = min(np.prod(boxes[a, 2:] - boxes[a, :2]), np.prod(boxes[b, 2:] - boxes[b, :2]))
                    if ix * iy > 0.5 * small:
                        hidden.add(a)
        keep = [i for i in range(len(visible)) if i not in hidden and rng.random() > miss]
        dets = boxes[keep] + rng.normal(0, jitter, (len(keep), 4))
        n_fp = rng.poisson(false_pos)
        fp_xy = rng.uniform([0, 0], [W - 60, H - 120], (n_fp, 2))
        dets = np.concatenate([dets, np.concatenate([fp_xy, fp_xy + [60, 120]], axis=1)])
        scores = np.concatenate([rng.uniform(0.6, 0.99, len(keep)), rng.uniform(0.5, 0.7, n_fp)])
        yield visible, boxes, dets.astype(np.float32), scores.astype(np.float32)


def iou_distance(gt: np.ndarray, hyp: np.ndarray) -> np.ndarray:
    """motmetrics' distance convention (1 - IoU, NaN = cannot match below IoU 0.5), computed
    with torchvision's box_iou: motmetrics 1.4's own iou_matrix calls np.asfarray, which
    NumPy 2 removed."""
    import torch
    from torchvision.ops import box_iou

    if not len(gt) or not len(hyp):
        return np.full((len(gt), len(hyp)), np.nan)
    iou = box_iou(torch.as_tensor(gt, dtype=torch.float64), torch.as_tensor(hyp, dtype=torch.float64)).numpy()
    return np.where(iou >= 0.5, 1 - iou, np.nan)


def evaluate(seed: int, objects: int, frames: int, miss: float, jitter: float, false_pos: float, algorithm: str):
    analyzer = StreamAnalyzer("bench", TrackingConfig(enabled=True, algorithm=algorithm),
                              (ZoneConfig(name="z", polygon=((0, 0), (W / 2, 0), (W / 2, H), (0, H))),),
                              (LineConfig(name="l", start=(W / 2, 0), end=(W / 2, H)),))
    acc = mm.MOTAccumulator(auto_id=True)
    spent, n_dets, state_bytes = 0.0, 0, 0
    for i, (gt_ids, gt_boxes, boxes, scores) in enumerate(scene(seed, objects, frames, miss, jitter, false_pos)):
        dets = Detections(boxes, scores, np.ones(len(boxes), np.int64), ("person",) * len(boxes))
        t0 = time.perf_counter()
        tracked, _ = analyzer.process(FrameMeta("bench", i, i / FPS, 0.0, W, H), dets)
        state_bytes += len(analyzer.save())  # saved with every publish (worst case: one frame per batch)
        spent += time.perf_counter() - t0
        n_dets += len(boxes)
        on = tracked.track_ids >= 0
        hyp = boxes[on]
        dist = iou_distance(gt_boxes, hyp)
        acc.update(list(gt_ids), list(tracked.track_ids[on]), dist)
    summary = mm.metrics.create().compute(acc, metrics=["mota", "idf1", "num_switches", "num_fragmentations",
                                                        "num_objects", "num_false_positives", "num_misses"], name="s")
    row = {k: float(v) for k, v in summary.iloc[0].items()}
    row.update({"ms_per_frame": round(spent * 1000 / frames, 3), "detections_per_frame": round(n_dets / frames, 1),
                "state_bytes": round(state_bytes / frames)})
    return row


SCENES = {
    "easy: 10 objects, 2% missed, 1 px jitter": dict(objects=10, miss=0.02, jitter=1.0, false_pos=0.2),
    "crowd: 40 objects crossing, 10% missed, 3 px jitter, 2 false/frame": dict(objects=40, miss=0.10, jitter=3.0,
                                                                              false_pos=2.0),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--out", default="benchmarks/out/tracking.json")
    a = ap.parse_args()
    doc = {"frames": a.frames, "size": f"{W}x{H}", "results": {}}
    for algorithm in ("bytetrack", "sort"):
        for name, params in SCENES.items():
            rows = [evaluate(seed, frames=a.frames, algorithm=algorithm, **params) for seed in range(3)]
            mean = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]}
            doc["results"][f"{algorithm} / {name}"] = mean
            print(f"{algorithm:9s} {name}: MOTA {mean['mota']:.3f}  IDF1 {mean['idf1']:.3f}  "
                  f"ID switches {mean['num_switches']:.0f}  {mean['ms_per_frame']:.2f} ms/frame "
                  f"incl. saving the state ({mean['state_bytes']:.0f} bytes), {mean['detections_per_frame']:.1f} detections/frame")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
