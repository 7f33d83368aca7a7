"""Where detection runs: in this process, or on a pool of Ray actors. Both return futures."""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Protocol, Sequence

from fpnstream.config import ModelConfig, RayConfig
from fpnstream.frames import BatchResult, Frame, StageTimes
from fpnstream.model import Detector

# Called with a batch just before inference; returns the frames still worth detecting.
Admit = Callable[[list[Frame]], list[Frame]]

log = logging.getLogger(__name__)


class DetectorBackend(Protocol):
    model_name: str
    device: str
    max_inflight: int

    def submit(self, frames: Sequence[Frame], admit: Admit | None = None) -> Future[BatchResult]: ...

    def close(self) -> None: ...


class InProcessBackend:
    """Runs the detector on worker threads (one per lane), so decode and publish overlap with
    inference and, on a CPU, several forward passes run at once."""

    def __init__(self, detector: Detector, max_inflight: int = 2, gpu_memory=None) -> None:
        """`gpu_memory`: a labelled Prometheus gauge, set after each batch when on CUDA."""
        self._detector = detector
        self._gpu_memory = gpu_memory.labels(str(detector.device)) if gpu_memory is not None and detector.device.type == "cuda" else None
        # One thread per lane; results are still published in submission order (the pipeline
        # keeps the futures in a FIFO).
        self._pool = ThreadPoolExecutor(max_workers=detector.lanes, thread_name_prefix="detector")
        self.model_name = detector.model_name
        self.device = str(detector.device)
        self.max_inflight = max(max_inflight, detector.lanes + 1)  # every lane busy, one batch ready

    @classmethod
    def from_config(cls, model_cfg: ModelConfig, ray_cfg: RayConfig, gpu_memory=None) -> InProcessBackend:
        return cls(Detector.from_config(model_cfg), ray_cfg.max_inflight_per_actor, gpu_memory)

    def submit(self, frames: Sequence[Frame], admit: Admit | None = None) -> Future[BatchResult]:
        return self._pool.submit(self._detect, list(frames), admit)

    def _detect(self, frames: list[Frame], admit: Admit | None) -> BatchResult:
        if admit is not None:
            frames = admit(frames)
        if not frames:
            return BatchResult((), (), StageTimes(0.0, 0.0, 0.0))
        result = self._detector.detect(frames)
        if self._gpu_memory is not None:
            import torch

            self._gpu_memory.set(torch.cuda.memory_allocated(self._detector.device))
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=True)
