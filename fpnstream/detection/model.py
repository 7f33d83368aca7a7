"""The detector stage: a torchvision FPN Faster R-CNN turning frames into `Detections`.

Plain Python, no Ray: a `StreamWorker` (fpnstream.runtime.worker) holds one inside a Ray actor,
the in-process pipeline calls it directly.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import warnings
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models import detection as tvd
from torchvision.models.detection.image_list import ImageList

from fpnstream.config.settings import ModelConfig
from fpnstream.core.errors import ModelError
from fpnstream.core.frames import BatchResult, Detections, Frame, StageTimes

log = logging.getLogger(__name__)

# Frames arriving through Ray's object store are read-only views; we only ever read them
# (the conversion below copies), so torch's warning about non-writable arrays is noise.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


@dataclass(frozen=True)
class _Arch:
    builder: Callable[..., torch.nn.Module]
    weights: Any  # torchvision WeightsEnum class


ARCHS: dict[str, _Arch] = {
    "fasterrcnn_resnet50_fpn": _Arch(tvd.fasterrcnn_resnet50_fpn, tvd.FasterRCNN_ResNet50_FPN_Weights),
    "fasterrcnn_resnet50_fpn_v2": _Arch(tvd.fasterrcnn_resnet50_fpn_v2, tvd.FasterRCNN_ResNet50_FPN_V2_Weights),
    "fasterrcnn_mobilenet_v3_large_fpn": _Arch(
        tvd.fasterrcnn_mobilenet_v3_large_fpn, tvd.FasterRCNN_MobileNet_V3_Large_FPN_Weights
    ),
    "fasterrcnn_mobilenet_v3_large_320_fpn": _Arch(
        tvd.fasterrcnn_mobilenet_v3_large_320_fpn, tvd.FasterRCNN_MobileNet_V3_Large_320_FPN_Weights
    ),
}

COCO_CATEGORIES: tuple[str, ...] = tuple(tvd.FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])

# With a class allow-list, torchvision's top-k runs before our filter; keep this many
# candidates so filtering still leaves up to `max_detections` allowed boxes.
_ALLOWLIST_CANDIDATES = 300


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ModelError("device 'cuda' requested but CUDA is not available on this machine")
        return torch.device("cuda")
    return torch.device("cpu")


def model_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """Keyword arguments for torchvision's builder that carry the user's options."""
    kw: dict[str, Any] = {
        "box_score_thresh": cfg.score_threshold,
        "box_detections_per_img": max(cfg.max_detections, _ALLOWLIST_CANDIDATES) if cfg.classes else cfg.max_detections,
    }
    if cfg.min_size is not None:
        kw["min_size"] = cfg.min_size
    if cfg.max_size is not None:
        kw["max_size"] = cfg.max_size
    return kw


def _read_labels(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ModelError(f"cannot read labels file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ModelError(f"labels file {path} is not UTF-8 text (one class name per line)") from None
    return [ln.strip() for ln in lines if ln.strip()]


def _load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    """Accepts a bare state_dict or {"state_dict"|"model": ..., "class_names"|"categories": [...]}."""
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises a zoo of types (UnpicklingError, RuntimeError, EOFError)
        raise ModelError(f"cannot load weights file {path}: not a readable PyTorch checkpoint ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise ModelError(f"weights file {path} holds a {type(obj).__name__}, expected a state_dict")
    names = obj.get("class_names") or obj.get("categories")
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"weights file {path} is not a state_dict of tensors")
    return obj, list(names) if names else None


def build_model(cfg: ModelConfig) -> tuple[torch.nn.Module, list[str]]:
    """Build the torchvision model with its weights; return it with its class names."""
    arch = ARCHS[cfg.name]
    kw = model_kwargs(cfg)
    weights = cfg.weights.strip()
    names: list[str] | None = None
    if weights.lower() == "none":
        model = arch.builder(weights=None, weights_backbone=None, num_classes=cfg.num_classes or 91, **kw)
    elif weights.upper() == "DEFAULT" or weights in arch.weights.__members__:
        enum = arch.weights.DEFAULT if weights.upper() == "DEFAULT" else arch.weights[weights]
        if cfg.num_classes not in (None, len(enum.meta["categories"])):
            raise ModelError(f"num_classes={cfg.num_classes} does not match {enum} ({len(enum.meta['categories'])} classes)")
        try:
            model = arch.builder(weights=enum, **kw)
            names = list(enum.meta["categories"])
        except Exception as e:  # URLError offline, HTTP errors, a corrupt cache file
            if cfg.weights_fallback != "random":
                raise ModelError(
                    f"cannot get pretrained weights {enum} ({type(e).__name__}: {e}); they download to "
                    "$TORCH_HOME on first use, which needs internet. Use --weights PATH for a local "
                    "checkpoint, or --weights none for random weights"
                ) from None
            log.warning(
                "pretrained weights %s are not available (%s). Running with RANDOM weights: the boxes "
                "published are meaningless. Use --weights PATH with a real checkpoint for real detections.",
                enum, type(e).__name__,
            )
            model = arch.builder(weights=None, weights_backbone=None, num_classes=91, **kw)
    else:
        state, names = _load_checkpoint(Path(weights))
        cls_weight = state.get("roi_heads.box_predictor.cls_score.weight")
        if cls_weight is None:
            raise ModelError(f"checkpoint {weights} does not match {cfg.name}: no roi_heads.box_predictor in it")
        num_classes = int(cls_weight.shape[0])
        if cfg.num_classes is not None and cfg.num_classes != num_classes:
            raise ModelError(f"num_classes={cfg.num_classes} but checkpoint {weights} has {num_classes} classes")
        model = arch.builder(weights=None, weights_backbone=None, num_classes=num_classes, **kw)
        _load_state(model, state, weights, cfg.name)
    num_classes = int(model.roi_heads.box_predictor.cls_score.out_features)
    if cfg.labels:
        names = _read_labels(cfg.labels)
    if names is not None and len(names) == num_classes - 1:
        names = ["__background__", *names]  # a labels file usually leaves out the background
    if names is not None and len(names) != num_classes:
        raise ModelError(f"{len(names)} class names given for a model with {num_classes} classes")
    if names is None:
        names = list(COCO_CATEGORIES) if num_classes == len(COCO_CATEGORIES) else [f"class_{i}" for i in range(num_classes)]
    return model, names


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str, name: str) -> None:
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), "shape mismatch")
        raise ModelError(f"checkpoint {path} does not match {name}: {first}") from None
    # Checkpoints from frozen-BN (pretrained) models carry no num_batches_tracked: harmless in eval.
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        sample = (missing or result.unexpected_keys)[:3]
        raise ModelError(
            f"checkpoint {path} does not match {name}: {len(missing)} missing and "
            f"{len(result.unexpected_keys)} unexpected keys (e.g. {', '.join(sample)})"
        )


class Detector:
    """Runs one batch of frames through the model and returns aligned detections per frame.

    Frames are grouped by size; each group is copied to the device in one transfer (from a
    pinned buffer on CUDA) and normalised and resized as one tensor, where torchvision's
    transform loops per image. The arithmetic is torchvision's own, in the same order, so
    on the CPU in fp32 a frame's result equals calling the torchvision model on that frame.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        class_names: Sequence[str],
        model_name: str,
        device: torch.device,
        max_detections: int,
        allowed_labels: frozenset[int] | None = None,
        precision: str = "fp32",
        channels_last: bool = False,
        lanes: int = 1,
        compile: bool = False,
        backbone_runtime: str = "torch",
        roi_align: str = "torchvision",
    ) -> None:
        """`lanes`: how many threads may call `detect` at once (the model is shared)."""
        self.lanes = lanes
        self.model = model.eval().to(device)
        self.class_names = tuple(class_names)
        self.model_name = model_name
        self.device = device
        self.max_detections = max_detections
        self._allowed = None if allowed_labels is None else torch.tensor(sorted(allowed_labels), device=device)
        from fpnstream.detection.acceleration import accelerate

        self.precision, self._memory_format = accelerate(self.model, device, precision, channels_last, compile,
                                                         backbone_runtime, lanes, roi_align)
        from fpnstream.detection.acceleration import DynamicBatch

        self._compiled = isinstance(self.model.backbone, DynamicBatch)
        self._shapes_run: set[tuple[int, int, bool]] = set()  # (height, width, batch of one) run so far
        self._local = threading.local()  # pinned buffers per lane: each lane syncs only its own copies

    @classmethod
    def from_config(cls, cfg: ModelConfig, max_batch: int = 1) -> Detector:
        """`max_batch`: the largest batch the pipeline forms (warm-up compiles it and 1)."""
        from fpnstream.detection.lanes import configure_torch_threads, plan_threads

        device = resolve_device(cfg.device)
        plan = plan_threads(device.type, cfg.torch_threads, cfg.lanes)
        if device.type == "cpu" or cfg.torch_threads:
            configure_torch_threads(plan)  # before any lane exists (see fpnstream.detection.lanes)
        lanes = plan.lanes
        model, names = build_model(cfg)
        allowed = None
        if cfg.classes:
            unknown = [c for c in cfg.classes if c not in names]
            if unknown:
                raise ModelError(f"unknown class name(s) in allow-list: {', '.join(unknown)}")
            allowed = frozenset(i for i, n in enumerate(names) if n in cfg.classes)
        detector = cls(model, names, cfg.name, device, cfg.max_detections, allowed, cfg.precision, cfg.channels_last,
                       lanes, cfg.compile, cfg.backbone_runtime, cfg.roi_align)
        if cfg.warmup_sizes:
            from fpnstream.detection.acceleration import warm_up

            warm_up(detector, [tuple(int(x) for x in s.split("x")) for s in cfg.warmup_sizes], sorted({1, max_batch}))
        return detector

    def will_compile(self, frames: Sequence[Frame]) -> bool:
        """Whether this batch makes the compiled model compile: a frame size and batch kind
        (one frame, or several: the batch dimension is dynamic above 1) not run before."""
        return self._compiled and not _shape_keys(frames) <= self._shapes_run

    @torch.inference_mode()
    def detect(self, frames: Sequence[Frame]) -> BatchResult:
        t0 = time.perf_counter()
        groups: dict[tuple[int, int], list[int]] = {}
        for i, f in enumerate(frames):
            groups.setdefault(f.image.shape[:2], []).append(i)
        prepared = [(idxs, self._preprocess([frames[i].image for i in idxs])) for idxs in groups.values()]
        self._sync()
        t1 = time.perf_counter()
        outputs: list[dict[str, torch.Tensor]] = [{}] * len(frames)
        for idxs, (images, original_size) in prepared:
            for i, out in zip(idxs, self._infer(images, original_size)):
                outputs[i] = out
        self._sync()
        t2 = time.perf_counter()
        detections = tuple(self._to_detections(out) for out in outputs)
        t3 = time.perf_counter()
        if self._compiled:
            self._shapes_run |= _shape_keys(frames)
        return BatchResult(
            metas=tuple(f.meta() for f in frames),
            detections=detections,
            times=StageTimes(preprocess=t1 - t0, inference=t2 - t1, postprocess=t3 - t2),
        )

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _upload(self, images: list[np.ndarray]) -> torch.Tensor:
        """uint8 N x H x W x 3 on the device, in one copy."""
        if self.device.type != "cuda":
            return torch.from_numpy(np.stack(images)) if len(images) > 1 else torch.from_numpy(images[0])[None]
        pinned: OrderedDict[tuple[int, int], torch.Tensor] = self._local.__dict__.setdefault("pinned", OrderedDict())
        key, n = images[0].shape[:2], len(images)
        buf = pinned.pop(key, None)
        if buf is None or buf.shape[0] < n:  # one buffer per frame size, as large as the largest batch
            buf = torch.empty((n,) + key + (3,), dtype=torch.uint8, pin_memory=True)
        pinned[key] = buf  # most recent last; this lane's batch before was synchronised, so reuse is safe
        while len(pinned) > 4:
            pinned.popitem(last=False)
        np.stack(images, out=buf[:n].numpy())
        return buf[:n].to(self.device, non_blocking=True)

    def _preprocess(self, images: list[np.ndarray]) -> tuple[ImageList, tuple[int, int]]:
        """torchvision's transform (normalise, resize, pad to the size divisor) on a batch of
        frames of one size."""
        transform = self.model.transform
        h, w = images[0].shape[:2]
        x = self._upload(images).permute(0, 3, 1, 2).float().div_(255.0)
        x = transform.normalize(x)
        if transform.fixed_size is not None:
            size, scale = [transform.fixed_size[1], transform.fixed_size[0]], None
        else:
            size, scale = None, min(transform.min_size[-1] / min(h, w), transform.max_size / max(h, w))
        x = F.interpolate(x, size=size, scale_factor=scale, mode="bilinear",
                          recompute_scale_factor=True if scale is not None else None, align_corners=False)
        rh, rw = x.shape[-2:]
        stride = transform.size_divisible
        ph, pw = math.ceil(rh / stride) * stride, math.ceil(rw / stride) * stride
        if (ph, pw) != (rh, rw):
            x = F.pad(x, (0, pw - rw, 0, ph - rh))
        return ImageList(x.contiguous(memory_format=self._memory_format), [(rh, rw)] * len(images)), (h, w)

    def _infer(self, images: ImageList, original_size: tuple[int, int]) -> list[dict[str, torch.Tensor]]:
        """GeneralizedRCNN.forward in eval mode, minus the transform done above."""
        m = self.model
        features = m.backbone(images.tensors)
        if isinstance(features, torch.Tensor):
            features = OrderedDict([("0", features)])
        proposals, _ = m.rpn(images, features)
        detections, _ = m.roi_heads(features, proposals, images.image_sizes)
        return m.transform.postprocess(detections, images.image_sizes, [original_size] * len(images.image_sizes))

    def _to_detections(self, out: dict[str, torch.Tensor]) -> Detections:
        boxes, scores, labels = out["boxes"], out["scores"], out["labels"]
        if self._allowed is not None:
            keep = torch.isin(labels, self._allowed)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        boxes, scores, labels = boxes[: self.max_detections], scores[: self.max_detections], labels[: self.max_detections]
        labels_np = labels.cpu().numpy().astype(np.int64)
        return Detections(
            boxes=boxes.float().cpu().numpy(),
            scores=scores.float().cpu().numpy(),
            labels=labels_np,
            names=tuple(self.class_names[i] for i in labels_np),
        )


def _shape_keys(frames: Sequence[Frame]) -> set[tuple[int, int, bool]]:
    sizes = Counter(f.image.shape[:2] for f in frames)  # `detect` runs each size as one batch
    return {(h, w, n == 1) for (h, w), n in sizes.items()}
