"""Seeded random checkpoints that really fire, for parity tests and benchmarks.

Untrained torchvision weights are degenerate: activations fade through a random backbone
and every class scores about 1/num_classes, so nothing passes a threshold. We calibrate
BatchNorm statistics on real frames, then sharpen and bias the class-score layer so that
frames give dozens of varied detections. The boxes mean nothing; the numbers are real.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fpnstream.detection.model import ARCHS


def _calibrate_batchnorm(model: torch.nn.Module, images: Sequence[torch.Tensor]) -> None:
    """Set each BatchNorm's running stats to the statistics of its own input on `images`.

    A pre-hook fills the stats just before the layer runs (in eval mode), so every later
    layer sees already-normalised features; works for any architecture, heads included.
    """
    sums: dict[torch.nn.Module, list] = {}

    def hook(module: torch.nn.BatchNorm2d, args: tuple[torch.Tensor]) -> None:
        x = args[0]
        dims = [0, 2, 3] if x.dim() == 4 else [0]
        acc = sums.setdefault(module, [0, 0.0, 0.0])
        acc[0] += 1
        acc[1] = acc[1] + x.mean(dims)
        acc[2] = acc[2] + x.var(dims, unbiased=False)
        module.running_mean.copy_(acc[1] / acc[0])
        module.running_var.copy_(acc[2] / acc[0] + 1e-3)

    bns = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d))]
    handles = [m.register_forward_pre_hook(hook) for m in bns]
    model.eval()
    with torch.no_grad():
        for img in images:
            model([img])
    for h in handles:
        h.remove()


def make_firing_model(
    name: str,
    frames: Sequence[np.ndarray],
    seed: int = 0,
    num_classes: int = 91,
    boosted_labels: Sequence[int] = (1, 3),
    logit_std: float = 2.5,
    boost: float = 4.0,
    **model_kwargs,
) -> torch.nn.Module:
    """A seeded random model whose class scores spread out: logits get `logit_std` spread
    across classes (measured on `frames`), background and `boosted_labels` are biased."""
    torch.manual_seed(seed)
    model = ARCHS[name].builder(weights=None, weights_backbone=None, num_classes=num_classes, **model_kwargs)
    images = [torch.from_numpy(f).permute(2, 0, 1).float().div(255.0) for f in frames]
    _calibrate_batchnorm(model, images)
    cls = model.roi_heads.box_predictor.cls_score
    logits: list[torch.Tensor] = []
    handle = cls.register_forward_hook(lambda m, a, out: logits.append(out - m.bias))
    with torch.no_grad():
        model(images[:1])
    handle.remove()
    spread = float(torch.cat(logits).std(dim=1).mean())
    with torch.no_grad():
        cls.weight.mul_(logit_std / max(spread, 1e-12))
        cls.bias.zero_()
        cls.bias[0] = -boost  # background must not win everything
        for label in boosted_labels:
            cls.bias[label] += boost
    return model.eval()


def save_checkpoint(model: torch.nn.Module, path: str | Path, class_names: Sequence[str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "class_names": list(class_names)} if class_names else state, path)
    return path
