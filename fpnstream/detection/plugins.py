"""Which detector a worker loads: torchvision's FPN Faster R-CNN (the default), or one of the
user's own named by `model.plugin` ("module:factory").

A factory is called as `factory(model_cfg, max_batch)` and returns an object with the
detector's shape: `detect(frames) -> BatchResult`, `lanes` (how many threads may call
`detect` at once), `model_name` and `device` (a torch.device or anything with `.type`).
Everything after detection (tracking, zones, publishing, failover) is the same for both.
"""

from __future__ import annotations

import importlib

from fpnstream.config.settings import ModelConfig
from fpnstream.core.errors import ModelError

_SHAPE = ("detect", "lanes", "model_name", "device")


def load_detector(cfg: ModelConfig, max_batch: int = 1):
    if cfg.plugin is None:
        from fpnstream.detection.model import Detector  # torch and torchvision load here

        return Detector.from_config(cfg, max_batch)
    module_name, _, attr = cfg.plugin.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except ImportError as e:
        raise ModelError(f"model.plugin {cfg.plugin}: cannot import {module_name}: {e}") from None
    except AttributeError:
        raise ModelError(f"model.plugin {cfg.plugin}: {module_name} has no {attr}") from None
    try:
        detector = factory(cfg, max_batch)
    except TypeError as e:  # not a factory of (ModelConfig, max_batch)
        raise ModelError(f"model.plugin {cfg.plugin}: cannot be called as factory(cfg, max_batch): {e}") from None
    missing = [a for a in _SHAPE if not hasattr(detector, a)]
    if missing:
        raise ModelError(f"model.plugin {cfg.plugin}: its detector lacks {', '.join(missing)}")
    return detector
