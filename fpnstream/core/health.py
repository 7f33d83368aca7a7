"""When is a worker hung? It answers status polls (its process is fine), it has work, and
its oldest batch in the detector has been running far longer than batches usually take.

The rule lives here, apart from Ray, so it can be read and tested on its own; the
coordinator applies it to what each worker reports (`DetectorProgress`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DetectorProgress:
    running_s: float  # age of the oldest batch now in the detector; 0 when none runs
    batch_s: float  # recent detect time per batch (moving average); 0 before the first
    compiling: bool = False  # the oldest batch is the first of its shape in a compiled model


@dataclass(frozen=True)
class HangPolicy:
    factor: float = 10.0  # this many recent batch times...
    floor_s: float = 60.0  # ...but never less than this (the first batches, slow warm-ups)
    # A batch that compiles (torch.compile meeting a frame size the warm-up did not cover)
    # legitimately takes minutes on a CPU: it gets this long before it counts as hung.
    compile_floor_s: float = 900.0

    def budget_s(self, p: DetectorProgress) -> float:
        return max(self.factor * p.batch_s, self.compile_floor_s if p.compiling else self.floor_s)

    def is_hung(self, p: DetectorProgress) -> bool:
        return p.running_s > self.budget_s(p)
