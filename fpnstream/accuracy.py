"""Does a faster setting (fp16/bf16 autocast, channels_last) still find what fp32 finds?

The check: of the fp32 detections above the score threshold, the share matched by a
detection of the candidate run with the same label and IoU >= 0.9 (one-to-one, greedy by
fp32 score). fpnstream keeps a setting only if that share is >= 95 %.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

from fpnstream.frames import Detections

REQUIRED_MATCH_RATE = 0.95


@dataclass(frozen=True)
class MatchReport:
    matched: int
    total: int  # fp32 detections considered

    @property
    def rate(self) -> float:
        return self.matched / self.total if self.total else 1.0

    @property
    def passed(self) -> bool:
        return self.rate >= REQUIRED_MATCH_RATE


def match_rate(reference: Sequence[Detections], candidate: Sequence[Detections], iou: float = 0.9,
               min_score: float = 0.0) -> MatchReport:
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference frames but {len(candidate)} candidate frames")
    matched = total = 0
    for ref, cand in zip(reference, candidate):
        keep = ref.scores >= min_score
        ref_boxes, ref_labels = ref.boxes[keep], ref.labels[keep]
        order = np.argsort(-ref.scores[keep], kind="stable")
        total += len(order)
        if not len(order) or not len(cand):
            continue
        ious = box_iou(torch.from_numpy(ref_boxes[order]).float(), torch.from_numpy(cand.boxes).float()).numpy()
        same_label = ref_labels[order][:, None] == cand.labels[None, :]
        ious = np.where(same_label, ious, 0.0)
        taken = np.zeros(len(cand), dtype=bool)
        for row in ious:
            row = np.where(taken, 0.0, row)
            j = int(np.argmax(row))
            if row[j] >= iou:
                taken[j] = True
                matched += 1
    return MatchReport(matched, total)
