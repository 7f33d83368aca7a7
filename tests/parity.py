"""Compare fpnstream's detections with torchvision's, called directly on the same frames."""

from __future__ import annotations

import numpy as np
import torch

from fpnstream.detection.model import ARCHS


def torchvision_reference(name: str, checkpoint, frames, **kwargs) -> list[dict[str, np.ndarray]]:
    """The loop a user would write: build the model, load the state_dict, call it per frame."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    num_classes = state["roi_heads.box_predictor.cls_score.weight"].shape[0]
    model = ARCHS[name].builder(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    model.load_state_dict(state)
    model.eval()
    out = []
    with torch.no_grad():
        for rgb in frames:
            (o,) = model([torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0])
            out.append({k: v.numpy() for k, v in o.items()})
    return out


def match_detections(ours: list[dict], ref: dict[str, np.ndarray], box_tol=0.01, score_tol=1e-3):
    """Greedy one-to-one matching; returns (matched, unmatched_ours, unmatched_ref)."""
    used = np.zeros(len(ref["scores"]), bool)
    matched = 0
    for d in ours:
        box = np.asarray(d["box"], np.float32)
        ok = (
            ~used
            & (ref["labels"] == d["label"])
            & (np.abs(ref["scores"] - d["score"]) <= score_tol)
            & (np.abs(ref["boxes"] - box).max(axis=1) <= box_tol)
        )
        hits = np.flatnonzero(ok)
        if len(hits):
            used[hits[0]] = True
            matched += 1
    return matched, len(ours) - matched, int((~used).sum())
