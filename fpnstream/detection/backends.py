"""Where detection runs: in this process, or on a pool of Ray actors. Both return futures."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from concurrent.futures import Future
from typing import Callable, Protocol, Sequence

from fpnstream.core.failpoints import NO_FAILPOINTS, Failpoints
from fpnstream.core.frames import BatchResult, Frame, StageTimes
from fpnstream.core.health import DetectorProgress
from fpnstream.detection.lanes import LanePool
from fpnstream.detection.model import Detector

# Called with a batch just before inference; returns the frames still worth detecting.
Admit = Callable[[list[Frame]], list[Frame]]

log = logging.getLogger(__name__)


class DetectorBackend(Protocol):
    model_name: str
    device: str
    max_inflight: int

    def submit(self, frames: Sequence[Frame], admit: Admit | None = None) -> Future[BatchResult]: ...

    def progress(self) -> DetectorProgress: ...

    def close(self) -> None: ...


class InProcessBackend:
    """Runs the detector on worker threads (one per lane), so decode and publish overlap with
    inference and, on a CPU, several forward passes run at once."""

    def __init__(self, detector: Detector, max_inflight: int = 2, gpu_memory=None,
                 failpoints: Failpoints = NO_FAILPOINTS) -> None:
        """`gpu_memory`: a labelled Prometheus gauge, set after each batch when on CUDA."""
        self._detector = detector
        self._failpoints = failpoints
        # Progress for the hung-worker watchdog: when each running batch started, and how
        # long batches take lately.
        self._running: dict[int, tuple[float, bool]] = {}  # batch -> (started, compiling)
        # Detectors other than ours (plugins, stand-ins) never compile.
        self._will_compile = getattr(detector, "will_compile", lambda frames: False)
        self._told: frozenset[str] = frozenset()  # shapes whose compiling was logged
        self._ids = itertools.count()
        self._batch_s = 0.0
        self._progress_lock = threading.Lock()
        self._gpu_memory = gpu_memory.labels(str(detector.device)) if gpu_memory is not None and detector.device.type == "cuda" else None
        # One thread per lane, all started and set up before the first batch (fpnstream.detection.lanes);
        # results are still published in submission order (the pipeline keeps a FIFO).
        self._pool = LanePool(detector.lanes, name="detector")
        self.model_name = detector.model_name
        self.device = str(detector.device)
        # Batches detecting at once: every lane busy, and (where there is one lane, as on a
        # GPU) the next batch formed while the current one runs.
        self.max_inflight = max(max_inflight, detector.lanes)

    def submit(self, frames: Sequence[Frame], admit: Admit | None = None) -> Future[BatchResult]:
        return self._pool.submit(self._detect, list(frames), admit)

    def _detect(self, frames: list[Frame], admit: Admit | None) -> BatchResult:
        if admit is not None:
            frames = admit(frames)
        if not frames:
            return BatchResult((), (), StageTimes(0.0, 0.0, 0.0))
        key, t0 = next(self._ids), time.monotonic()
        # A compiling batch is told apart: the watchdog gives it longer, and its minutes
        # must not enter the recent batch time either.
        compiling = self._will_compile(frames)
        if compiling:
            what = f"{', '.join(sorted({f'{f.image.shape[1]}x{f.image.shape[0]}' for f in frames}))}, " + (
                "batch of 1" if len(frames) == 1 else "batches of several frames")
            with self._progress_lock:
                told, self._told = what in self._told, self._told | {what}  # two lanes may meet it at once
            if not told:
                log.warning("compiling the model for %s (not warmed up: see model.warmup_sizes); these batches "
                            "take longer", what)
        with self._progress_lock:
            self._running[key] = (t0, compiling)
        try:
            self._failpoints.hang_if("detector.hang")
            self._failpoints.raise_if("detector.crash")
            result = self._detector.detect(frames)
        finally:
            with self._progress_lock:
                del self._running[key]
                took = time.monotonic() - t0
                if not compiling:
                    self._batch_s = took if self._batch_s == 0 else self._batch_s + 0.2 * (took - self._batch_s)
        if self._gpu_memory is not None:
            import torch

            self._gpu_memory.set(torch.cuda.memory_allocated(self._detector.device))
        return result

    def progress(self) -> DetectorProgress:
        with self._progress_lock:
            oldest = min(self._running.values(), default=None)
            if oldest is None:
                return DetectorProgress(0.0, self._batch_s)
            return DetectorProgress(time.monotonic() - oldest[0], self._batch_s, compiling=oldest[1])

    def close(self) -> None:
        self._pool.close()
