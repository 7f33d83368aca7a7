"""The coordinator's view of its workers: which are healthy, and why the others are not.

A worker is down when it dies, stops answering (`ray.poll_misses` polls in a row), or
hangs (answers, but a batch runs far past its usual time: `HangPolicy`); a hung worker is
restarted, a restarted one is loaded again and is healthy once it answers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterator

from fpnstream.config.settings import RayConfig
from fpnstream.core.health import HangPolicy
from fpnstream.core.reports import WorkerInfo, WorkerStatus
from fpnstream.observe.metrics import DriverMetrics
from fpnstream.runtime.pool import WorkerGone, WorkerPool
from fpnstream.runtime.status_board import StatusBoard

log = logging.getLogger(__name__)


@dataclass
class WorkerState:
    index: int
    info: WorkerInfo | None = None
    healthy: bool = False
    recorded: bool = False  # its row in the workers hash is written
    down_reason: str = ""  # why its streams were moved, for `streams list`
    down_detail: str = ""  # what it said (a pipeline's error), for a stream that fails of it
    reloading: bool = False
    misses: int = 0  # status polls in a row without an answer
    batch_s: float = 0.0  # its recent detect time per batch
    joining: bool = False  # added while running: not loaded yet for the first time


class WorkerRoster:
    def __init__(self, pool: WorkerPool, ray_cfg: RayConfig, board: StatusBoard, driver_metrics: DriverMetrics,
                 on_worker_metrics: Callable[[int, str], None]) -> None:
        self._pool = pool
        self._cfg = ray_cfg
        self._board = board
        self._driver_metrics = driver_metrics
        self._on_worker_metrics = on_worker_metrics
        self._hang = HangPolicy(ray_cfg.hang_factor, ray_cfg.hang_floor_s, ray_cfg.hang_compile_floor_s)
        self.workers: list[WorkerState] = []

    def start(self) -> None:
        infos = self._pool.start()
        self.workers = [WorkerState(i, info, healthy=True) for i, info in enumerate(infos)]
        self.record()
        log.info("%d stream worker(s) ready: %s on %s", len(infos), infos[0].model, infos[0].device)

    def add_worker(self) -> WorkerState:
        """A new worker on capacity that appeared (a node joined); it loads in the
        background and takes streams once it answers loaded."""
        w = WorkerState(self._pool.grow(), reloading=True, joining=True)
        self.workers.append(w)
        log.info("cluster capacity for another worker: starting worker %d", w.index)
        return w

    def record(self) -> None:
        for w in self.workers:
            if not w.recorded and w.info is not None:
                w.recorded = self._board.record_worker(w.index, w.info)

    def healthy(self) -> list[WorkerState]:
        return [w for w in self.workers if w.healthy]

    def least_loaded(self, assigned: list[int | None]) -> WorkerState | None:
        """The healthy worker with the fewest of the `assigned` streams (their workers), or None."""
        healthy = self.healthy()
        return min(healthy, key=lambda w: (assigned.count(w.index), w.index)) if healthy else None

    def mark_down(self, w: WorkerState, reason: str, detail: str = "") -> None:
        """`reason` (a short word) labels the moves it causes; `detail` is for the log."""
        if w.healthy:
            log.warning("worker %d is down (%s); moving its streams", w.index, detail or reason)
        w.healthy = False
        w.down_reason = reason

    def poll(self) -> Iterator[tuple[int, WorkerStatus]]:
        """Poll every worker, update health; yields the answers of healthy workers."""
        for w, st in zip(self.workers, self._pool.poll(self._cfg.poll_interval_s)):
            if st is None:
                # A busy worker can miss a poll (its threads hold the CPU); only a run of
                # misses means it is gone. A dead one answers WorkerGone at once. A joining
                # one may still wait for Ray to place it.
                w.misses += 0 if w.joining else 1
                if w.misses >= self._cfg.poll_misses:
                    self.mark_down(w, "unresponsive", f"no answer to {w.misses} status polls")
            elif isinstance(st, WorkerGone):
                self.mark_down(w, "died", str(st))
            elif not st.loaded or w.info is None or st.incarnation != w.info.incarnation:
                self._reload(w)
            else:
                w.misses, w.batch_s = 0, st.progress.batch_s
                if st.failure:
                    self._failed(w, st)
                    continue
                if self._hang.is_hung(st.progress):
                    self._hung(w, st)
                    continue
                if not w.healthy and not w.reloading:
                    log.info("worker %d answers again", w.index)
                    w.healthy = True
                self._on_worker_metrics(w.index, st.metrics)
                yield w.index, st

    def _hung(self, w: WorkerState, st: WorkerStatus) -> None:
        """It answers, but its detector has not returned for far longer than usual: its
        streams move (the new owners' claims fence it off) and it starts afresh."""
        p = st.progress
        if w.healthy:
            self._driver_metrics.worker_hangs.inc()
            log.warning("worker %d is hung: a batch has run for %.0f s (recent batches %.2f s, limit %.0f s); "
                        "moving its streams and restarting it", w.index, p.running_s, p.batch_s, self._hang.budget_s(p))
        w.healthy, w.down_reason = False, "hung"
        self._pool.restart(w.index)

    def _failed(self, w: WorkerState, st: WorkerStatus) -> None:
        """It answers, but its pipeline stopped on an error: nothing it holds will be
        published. Its streams move and it starts afresh, as a hung one does."""
        if w.healthy:
            log.error("worker %d stopped working (%s); moving its streams and restarting it", w.index, st.failure)
        w.healthy, w.down_reason, w.down_detail = False, "failed", st.failure
        self._pool.restart(w.index)

    def _reload(self, w: WorkerState) -> None:
        """The worker was restarted (by Ray, or by us): it lost its model and streams."""
        if not w.reloading:
            log.warning("worker %d was restarted; reloading it", w.index)
            w.healthy, w.reloading = False, True
        try:
            info = self._pool.reload(w.index)
        except WorkerGone as e:
            log.warning("worker %d failed to reload: %s", w.index, e)
            return
        if info is not None:
            w.info, w.healthy, w.recorded, w.reloading = info, True, False, False
            log.info("worker %d %s", w.index, "joined" if w.joining else "is back")
            w.joining = False
