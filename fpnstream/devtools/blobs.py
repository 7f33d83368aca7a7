"""A classical detector for synthetic scenes: bright blobs on a dark background, found with
OpenCV's connected components. Loaded through `model.plugin`
("fpnstream.devtools.blobs:blob_detector"), it lets a test drive the whole pipeline (decode,
batching, tracking, zones and lines, fenced publishing, failover) with objects whose true
trajectories are known; no weights that localise objects can be had here, and the
torchvision detector's own correctness is the parity tests' job."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from fpnstream.core.frames import BatchResult, Detections, Frame, StageTimes


class BlobDetector:
    lanes = 1
    model_name = "blobs"
    device = torch.device("cpu")

    def __init__(self, threshold: int = 128, min_area: int = 16) -> None:
        self._threshold = threshold
        self._min_area = min_area

    def detect(self, frames: list[Frame]) -> BatchResult:
        return BatchResult(tuple(f.meta() for f in frames), tuple(self._blobs(f.image) for f in frames),
                           StageTimes(0.0, 0.0, 0.0))

    def _blobs(self, rgb: np.ndarray) -> Detections:
        mask = (rgb.max(axis=2) >= self._threshold).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        keep = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= self._min_area]  # 0 is the background
        x, y = stats[keep, cv2.CC_STAT_LEFT], stats[keep, cv2.CC_STAT_TOP]
        w, h = stats[keep, cv2.CC_STAT_WIDTH], stats[keep, cv2.CC_STAT_HEIGHT]
        boxes = np.stack([x, y, x + w, y + h], axis=1).astype(np.float32).reshape(-1, 4)
        k = len(keep)
        return Detections(boxes, np.full(k, 0.99, np.float32), np.ones(k, np.int64), ("object",) * k)


def blob_detector(cfg, max_batch: int = 1) -> BlobDetector:
    """The `model.plugin` factory; `model.score_threshold` (0..1) sets the brightness cut."""
    return BlobDetector(threshold=int(round(cfg.score_threshold * 255)))
