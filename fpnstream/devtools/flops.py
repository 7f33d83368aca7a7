"""Honest FLOP figures: work counted on the real input, and a measured peak to compare with.

torchvision's weight metadata gives GFLOPs at a reference size; a pipeline's frames are
another size, and the box head's cost grows with the number of proposals, so the bench
counts the operations of one real forward pass with torch's own FlopCounterMode instead.
"""

from __future__ import annotations

import time


def measured_peak_flops(device: str, dtype: str = "fp32") -> float:
    """Dense matmul throughput (fp32, or bf16/fp16 for the modes that use them): an
    empirical peak for a device without a spec sheet."""
    import torch

    dev = torch.device(device)
    kind = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    a = torch.randn(2048, 2048, device=dev, dtype=kind)
    b = torch.randn(2048, 2048, device=dev, dtype=kind)
    for _ in range(2):
        a @ b
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    reps = 10
    for _ in range(reps):
        a @ b
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return 2 * 2048**3 * reps / (time.perf_counter() - t)


def count_gflops(detector, frame) -> tuple[float, dict[str, float]]:
    """GFLOPs of one fp32 forward pass on `frame` (a decoded frame of the benchmark's input)
    through `detector`, in total and per operator (convolution, addmm, ...)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        detector.detect([frame])
    per_op = {str(op).split(".")[1] if "." in str(op) else str(op): n / 1e9  # aten.addmm -> addmm
              for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return counter.get_total_flops() / 1e9, {k: round(v, 3) for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])}
