"""Opt-in fast paths for the dense layers of a torchvision detector: a bf16 or int8 box head
on a CPU, channels_last, and `torch.compile` with static shapes warmed up at load.

None of these is on by default: fp32 eager keeps exact parity with torchvision, and every
other mode is checked against it by `fpnstream bench` (>= 95 % of fp32 detections matched
at IoU >= 0.9, same label). What each one bought on this project's machines is in
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections import OrderedDict
from typing import Any, Sequence

import torch

log = logging.getLogger(__name__)


def _to_fp32(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float()
    if isinstance(out, dict):
        return type(out)((k, _to_fp32(v)) for k, v in out.items())
    if isinstance(out, (list, tuple)):
        return type(out)(_to_fp32(v) for v in out)
    return out


class _LowPrecision(torch.nn.Module):
    """Runs a dense sub-network under autocast and hands fp32 back to the rest."""

    def __init__(self, inner: torch.nn.Module, dtype: torch.dtype, device_type: str = "cuda") -> None:
        super().__init__()
        self.inner = inner
        self.dtype = dtype
        self.device_type = device_type
        self.out_channels = getattr(inner, "out_channels", None)

    def forward(self, *args: Any) -> Any:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return _to_fp32(self.inner(*args))


def use_low_precision(model: torch.nn.Module, dtype: torch.dtype, device_type: str) -> None:
    model.backbone = _LowPrecision(model.backbone, dtype, device_type)
    model.rpn.head = _LowPrecision(model.rpn.head, dtype, device_type)
    model.roi_heads.box_head = _LowPrecision(model.roi_heads.box_head, dtype, device_type)
    model.roi_heads.box_predictor = _LowPrecision(model.roi_heads.box_predictor, dtype, device_type)


def accelerate(model: torch.nn.Module, device: torch.device, precision: str, channels_last: bool,
               compile: bool, runtime: str = "torch", lanes: int = 1,
               roi_align: str = "torchvision") -> tuple[str, torch.memory_format]:
    """Apply the configured fast paths; returns the precision in effect and the backbone's
    input memory format."""
    cuda = device.type == "cuda"
    if roi_align == "gather":
        from fpnstream.detection.roi_gather import gather_roi_pool

        if cuda:
            log.warning("roi_align gather applies on CPU only (torchvision's CUDA kernel is parallel already)")
        elif not gather_roi_pool(model):
            log.warning("roi_align gather needs torchvision's MultiScaleRoIAlign with a fixed sampling ratio; "
                        "keeping the model's own")
    if runtime == "openvino":
        if cuda:
            log.warning("backbone_runtime openvino applies on CPU only; running torch on %s", device)
        else:
            use_openvino_backbone(model, lanes)
            channels_last = compile = False  # OpenVINO picks its own layouts and kernels
    if precision == "fp16" and not cuda:
        log.warning("precision fp16 applies on CUDA only; running fp32 on %s", device)
        precision = "fp32"
    if precision == "bf16" and not cuda:
        if native_bf16():
            bf16_box_head(model)
            return precision, _apply_layout_and_compile(model, channels_last, compile, device.type)
        log.warning("precision bf16 on a CPU needs native bf16 dot products (AVX-512 BF16 or AMX), which this "
                    "CPU lacks; running fp32")
        precision = "fp32"
    if precision == "int8" and cuda:
        log.warning("precision int8 applies on CPU only (torch's dynamic int8 kernels); running fp32 on %s", device)
        precision = "fp32"
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    if dtype is not None:
        # Only the dense layers run in low precision. Anchors, box decoding, NMS and the
        # final boxes stay fp32: in fp16, NMS's per-class coordinate offsets overflow for
        # high class ids on large frames, and bf16 boxes would be rounded to 8-16 px.
        use_low_precision(model, dtype, device.type)
    if precision == "int8":
        quantize_box_head(model)
    return precision, _apply_layout_and_compile(model, channels_last, compile, device.type)


def _apply_layout_and_compile(model: torch.nn.Module, channels_last: bool, compile: bool,
                              device_type: str) -> torch.memory_format:
    """NHWC backbone and/or compiled dense parts; returns the backbone's input memory format."""
    if channels_last:
        model.backbone.to(memory_format=torch.channels_last)
    if compile:
        compile_dense(model, device_type)
    return torch.channels_last if channels_last else torch.contiguous_format


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX). Without it
    oneDNN emulates bf16 and the GEMM gets slower, not faster."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:  # not Linux: no portable way to ask; stay on fp32
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class Bf16Linear(torch.nn.Module):
    """A Linear layer whose GEMM runs in bf16 (oneDNN, fp32 accumulation) with its weight
    cast once; the bias is added in fp32 and fp32 goes on to the next layer."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.linear(x.to(torch.bfloat16), self.weight).float()
        return y if self.bias is None else y.add_(self.bias)


def bf16_box_head(model: torch.nn.Module) -> None:
    """The box head's Linear layers (fc6: 12544 -> 1024 over every proposal, about 60 % of
    a mobilenet-320 pass's FLOPs; fc7) in bf16 on a CPU with native bf16: about 4x faster
    than fp32 on AVX-512 BF16. Only these: in bf16 the backbone lost half of fp32's
    detections in the accuracy check, the box head none (benchmarks/RESULTS.md). The
    predictor stays fp32 (its scores and box deltas are what the threshold and NMS see)."""
    head = model.roi_heads.box_head
    for name, child in list(head.named_children()):
        if isinstance(child, torch.nn.Linear):
            setattr(head, name, Bf16Linear(child))


def quantize_box_head(model: torch.nn.Module) -> None:
    """Dynamic int8 (weights int8, activations quantised per batch) for the box head's and
    predictor's Linear layers: on a CPU they are most of the FLOPs (the 12544 -> 1024 layer
    over every proposal) and VNNI runs int8 dot products at up to 4x the fp32 rate. The
    convolutions stay fp32. CPU only: torch's dynamic quantised kernels have no CUDA path."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao; it still ships and works
        # in torch 2.13, and torchao's int8 CPU path needs a newer torch than the GPU image.
        warnings.simplefilter("ignore")
        heads = model.roi_heads
        heads.box_head = quantize_dynamic(heads.box_head, {torch.nn.Linear}, dtype=torch.qint8)
        heads.box_predictor = quantize_dynamic(heads.box_predictor, {torch.nn.Linear}, dtype=torch.qint8)


def compile_dense(model: torch.nn.Module, device_type: str) -> None:
    """Compile the dense parts with static frame sizes, each compiled once and cached: the
    backbone+FPN and the RPN head see one height and width per frame size (a stream never
    changes size). The batch dimension is marked dynamic above 1 (`DynamicBatch`), so a
    size needs two graphs, batch 1 and any larger batch, both compiled by the warm-up: a
    deadline-closed batch of an unwarmed size would otherwise compile mid-run, for longer
    than the hang watchdog allows a batch on a CPU. On CUDA, `reduce-overhead` replays
    CUDA graphs (one launch per pass instead of hundreds), recorded per concrete shape, so
    there the box head and predictor are compiled too, on rows padded to a bucket
    (`PaddedRows`: the proposals that survive the RPN's NMS vary per frame). On a CPU the
    heads stay eager: their time is one GEMM each, which compiling did not shorten
    (measured, benchmarks/RESULTS.md)."""
    mode = "reduce-overhead" if device_type == "cuda" else None
    model.backbone = DynamicBatch(torch.compile(model.backbone, dynamic=False, mode=mode))
    model.rpn.head = DynamicBatch(torch.compile(model.rpn.head, dynamic=False, mode=mode))
    if device_type == "cuda":
        heads, step = model.roi_heads, model.rpn.post_nms_top_n()
        heads.box_head = PaddedRows(torch.compile(heads.box_head, dynamic=False, mode=mode), step)
        heads.box_predictor = PaddedRows(torch.compile(heads.box_predictor, dynamic=False, mode=mode), step)


def _mark_rows_dynamic(t: torch.Tensor) -> None:
    # dynamo always specialises a dimension of size 1; it cannot be marked
    if t.shape[0] > 1:
        torch._dynamo.mark_dynamic(t, 0)


class DynamicBatch(torch.nn.Module):
    """Calls a module compiled with static shapes with dim 0 of its input tensors (the
    batch) marked dynamic: one graph serves every batch size above 1, heights and widths
    stay static."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Any) -> Any:
        for t in x if isinstance(x, (list, tuple)) else (x,):
            _mark_rows_dynamic(t)
        return self.inner(x)


class PaddedRows(torch.nn.Module):
    """Runs a module whose rows are independent (the box head and predictor in eval mode:
    Linear, ReLU, per-RoI convolutions, frozen batch norm) on its rows padded with zeros up
    to a bucket, and cuts the padding off its outputs, so a compiled graph sees few shapes
    and CUDA graphs can be recorded once per bucket. A batch of n images has at most
    n * `step` proposals (`step`: the RPN's post-NMS top-n), usually exactly that many; the
    bucket is k * step for k = ceil(rows / step), k rounded up to a power of two above 4
    (batches up to 16: at most 6 buckets). Buckets above one image's are marked dynamic,
    so they share one compiled graph, as batches do in `DynamicBatch`."""

    def __init__(self, inner: torch.nn.Module, step: int) -> None:
        super().__init__()
        self.inner = inner
        self.step = max(1, step)

    def bucket(self, rows: int) -> int:
        k = max(1, -(-rows // self.step))
        return self.step * (k if k <= 4 else 1 << (k - 1).bit_length())

    def forward(self, x: torch.Tensor) -> Any:
        rows = x.shape[0]
        padded = self.bucket(rows)
        if padded != rows:
            x = torch.cat([x, x.new_zeros((padded - rows, *x.shape[1:]))])
        if padded > self.step:
            _mark_rows_dynamic(x)
        out = self.inner(x)
        return tuple(o[:rows] for o in out) if isinstance(out, tuple) else out[:rows]


def warm_up(detector, sizes: Sequence[tuple[int, int]], batch_sizes: Sequence[int] = (1,)) -> float:
    """Run one pass per configured frame size (W, H) and batch size before the first real
    frame, so compilation and oneDNN's first-call set-up do not land on live frames (with
    static shapes, another batch size compiles when first seen). Returns seconds."""
    import numpy as np

    from fpnstream.core.frames import Frame

    t0 = time.perf_counter()
    for w, h in sizes:
        for n in batch_sizes:
            frames = [Frame(np.zeros((h, w, 3), np.uint8), "_warmup", i, None, time.time()) for i in range(n)]
            detector.detect(frames)
    took = time.perf_counter() - t0
    if sizes:
        log.info("detector warmed up for %s (batches of %s) in %.1f s", ", ".join(f"{w}x{h}" for w, h in sizes),
                 "/".join(map(str, batch_sizes)), took)
    return took


class OpenVinoBackbone(torch.nn.Module):
    """The backbone+FPN run by OpenVINO's CPU runtime instead of torch: same fp32 arithmetic
    (measured: every fp32 detection kept), about twice as fast on this project's CPU. The
    network is converted once and compiled per input shape (a stream's frames never change
    size); each lane thread gets its own infer request."""

    def __init__(self, backbone: torch.nn.Module, lanes: int, threads_per_lane: int) -> None:
        super().__init__()
        self.out_channels = backbone.out_channels
        self._torch = [backbone]  # a list: not a submodule, so .to()/.eval() leave it alone
        self._config = {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": str(lanes),
                        "INFERENCE_NUM_THREADS": str(lanes * threads_per_lane), "INFERENCE_PRECISION_HINT": "f32"}
        self._compiled: dict[tuple[int, ...], Any] = {}
        self._names: list[str] = []
        self._lock = threading.Lock()
        self._local = threading.local()

    def _compile(self, shape: tuple[int, ...]) -> Any:
        import openvino as ov

        with self._lock:
            if shape not in self._compiled:
                backbone = self._torch[0]

                class _Tuple(torch.nn.Module):  # OpenVINO wants a tuple of outputs, not a dict
                    def __init__(self) -> None:
                        super().__init__()
                        self.inner = backbone

                    def forward(self, x: torch.Tensor):
                        return tuple(self.inner(x).values())

                with torch.inference_mode(False), torch.no_grad():
                    example = torch.zeros(shape)
                    self._names = list(backbone(example).keys())
                    model = ov.convert_model(_Tuple().eval(), example_input=example)
                self._compiled[shape] = ov.Core().compile_model(model, "CPU", self._config)
                log.info("OpenVINO backbone compiled for input %s", "x".join(map(str, shape)))
            return self._compiled[shape]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        shape = tuple(x.shape)
        requests = self._local.__dict__.setdefault("requests", {})
        request = requests.get(shape)
        if request is None:
            request = requests[shape] = self._compile(shape).create_infer_request()
        out = request.infer({0: x.contiguous().numpy()})
        # copies: the request's output buffers are reused by its next call
        return OrderedDict((name, torch.from_numpy(out[i].copy())) for i, name in enumerate(self._names))


def use_openvino_backbone(model: torch.nn.Module, lanes: int) -> None:
    model.backbone = OpenVinoBackbone(model.backbone, lanes, max(1, torch.get_num_threads()))
