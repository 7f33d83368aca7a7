"""The pool follows the cluster: grow when capacity appears, ask Ray's autoscaler when
streams need more than the cluster has, and move streams onto new workers by measured load.

Plain policy over a `WorkerPool`: the Ray pool answers what the cluster can host; the local
pool never grows. Only a pool without a fixed size (`ray.num_actors` unset) is elastic.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from fpnstream.config.settings import RayConfig

log = logging.getLogger(__name__)


@dataclass
class Placement:
    """A running stream as the balancer sees it."""

    stream_id: str
    worker: int
    fps: float  # measured frames/s published lately (0 at first)
    moved_at: float = -math.inf


def stream_load(fps: float) -> float:
    """A stream's weight: its measured rate, and at least 1 (a new or idle stream still
    costs a decoder and a slot)."""
    return max(1.0, fps / 10.0)


class ScalingPolicy:
    def __init__(self, cfg: RayConfig, elastic: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self._cfg = cfg
        self.elastic = elastic
        self._clock = clock
        self.requested_workers = 0

    def should_grow(self, workers: int, pending: int, spare_capacity: bool) -> bool:
        """One more worker when the cluster has room for one, none is still joining, and
        the pool is below its maximum."""
        return self.elastic and spare_capacity and pending == 0 and workers < self._cfg.max_actors

    def wanted_workers(self, streams: int) -> int:
        """Workers the running streams need (`ray.streams_per_worker` each), capped."""
        return min(self._cfg.max_actors, max(1, math.ceil(streams / self._cfg.streams_per_worker)))

    def moves(self, placements: Iterable[Placement], healthy: list[int]) -> list[tuple[str, int]]:
        """Streams to move (stream, to worker) so no worker's load exceeds another's by more
        than the tolerance. Each move strictly narrows the gap, and a stream moved lately
        stays, so streams never bounce between two workers."""
        if not self.elastic or len(healthy) < 2:
            return []
        now = self._clock()
        load = {w: 0.0 for w in healthy}
        mine: dict[int, list[Placement]] = {w: [] for w in healthy}
        for p in placements:
            if p.worker in load:
                load[p.worker] += stream_load(p.fps)
                mine[p.worker].append(p)
        out: list[tuple[str, int]] = []
        while True:
            src = max(load, key=lambda w: (load[w], -w))
            dst = min(load, key=lambda w: (load[w], w))
            gap = load[src] - load[dst]
            if gap <= self._cfg.balance_tolerance:
                return out
            movable = [p for p in mine[src] if now - p.moved_at >= self._cfg.balance_cooldown_s
                       and stream_load(p.fps) < gap]
            if not movable:
                return out
            p = min(movable, key=lambda p: (abs(gap - 2 * stream_load(p.fps)), p.stream_id))
            mine[src].remove(p)
            mine[dst].append(p)
            load[src] -= stream_load(p.fps)
            load[dst] += stream_load(p.fps)
            out.append((p.stream_id, dst))


class PoolScaler:
    """Runs the policy against the roster and the pool, every `period_s`."""

    def __init__(self, policy: ScalingPolicy, roster, pool, driver_metrics, period_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._policy, self._roster, self._pool = policy, roster, pool
        self._metrics = driver_metrics
        self._period_s, self._clock = period_s, clock
        self._next = 0.0

    def tick(self, placements: list[Placement], move: Callable[[str, int], bool]) -> None:
        if not self._policy.elastic or self._clock() < self._next:
            return
        self._next = self._clock() + self._period_s
        workers = self._roster.workers
        joining = sum(1 for w in workers if w.info is None)
        if self._policy.should_grow(len(workers), joining, self._pool.spare_capacity()):
            self._roster.add_worker()
        wanted = self._policy.wanted_workers(len(placements))
        requested = self._policy.requested_workers
        if wanted > len(workers) and wanted != requested:
            # Declarative: Ray's autoscaler adds nodes until `wanted` workers' bundles fit
            # (a no-op without an autoscaler, e.g. a fixed cluster or a laptop).
            self._pool.request_capacity(wanted)
            self._policy.requested_workers = wanted
            self._metrics.workers_wanted.set(wanted)
            log.warning("%d streams need %d workers (%d per worker) and the cluster holds %d: asked Ray's "
                        "autoscaler for capacity", len(placements), wanted, self._policy._cfg.streams_per_worker,
                        len(workers))
        elif requested and wanted < requested:
            # Streams ended: a request stays until replaced, so lower it, or the autoscaler
            # keeps nodes up for workers nobody needs any more.
            self._pool.request_capacity(wanted)
            self._policy.requested_workers = wanted
            self._metrics.workers_wanted.set(wanted)
        healthy = [w.index for w in self._roster.healthy()]
        for stream_id, dst in self._policy.moves(placements, healthy):
            move(stream_id, dst)
