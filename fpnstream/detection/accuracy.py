"""Does a faster setting (fp16/bf16 autocast, channels_last) still find what fp32 finds?

The check: of the fp32 detections above the score threshold, the share matched by a
detection of the candidate run with the same label and IoU >= 0.9 (one-to-one, greedy by
fp32 score). A setting passes if that share is >= 95 % and the candidate has no more than
5 % extra detections above the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

from fpnstream.core.frames import Detections

REQUIRED_MATCH_RATE = 0.95


@dataclass(frozen=True)
class MatchReport:
    matched: int
    total: int  # fp32 detections considered
    extra: int = 0  # candidate detections above the threshold that match no fp32 one

    @property
    def rate(self) -> float:
        return self.matched / self.total if self.total else 1.0

    @property
    def passed(self) -> bool:
        """>= 95 % of fp32's detections found, and no more than 5 % extra ones (duplicates
        that a broken NMS lets through would otherwise pass)."""
        return self.rate >= REQUIRED_MATCH_RATE and self.extra <= (1 - REQUIRED_MATCH_RATE) * self.total


def match_rate(reference: Sequence[Detections], candidate: Sequence[Detections], iou: float = 0.9,
               min_score: float = 0.0) -> MatchReport:
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference frames but {len(candidate)} candidate frames")
    matched = total = extra = 0
    for ref, cand in zip(reference, candidate):
        keep = ref.scores >= min_score
        ref_boxes, ref_labels = ref.boxes[keep], ref.labels[keep]
        order = np.argsort(-ref.scores[keep], kind="stable")
        total += len(order)
        cand_above = cand.scores >= min_score
        taken = np.zeros(len(cand), dtype=bool)
        if len(order) and len(cand):
            ious = box_iou(torch.from_numpy(ref_boxes[order]).float(), torch.from_numpy(cand.boxes).float()).numpy()
            same_label = ref_labels[order][:, None] == cand.labels[None, :]
            ious = np.where(same_label, ious, 0.0)
            for row in ious:
                row = np.where(taken, 0.0, row)
                j = int(np.argmax(row))
                if row[j] >= iou:
                    taken[j] = True
                    matched += 1
        extra += int((cand_above & ~taken).sum())
    return MatchReport(matched, total, extra)
