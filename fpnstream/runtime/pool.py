"""Worker pools: where stream workers live. The coordinator's rules run the same over both.

`LocalPool` holds workers in this process (what `fpnstream run --in-process` runs);
`fpnstream.cluster.RayPool` holds them as Ray actors. Both implement `WorkerPool`.
"""

from __future__ import annotations

import logging
from typing import Protocol

import redis

from fpnstream.config.settings import AppConfig
from fpnstream.core.errors import StreamUnwritable
from fpnstream.core.redact import redact_text
from fpnstream.core.reports import Assignment, Resume, WorkerInfo, WorkerStatus
from fpnstream.observe.metrics import Metrics
from fpnstream.runtime.worker import StreamWorker
from fpnstream.sources import SourceSpec

log = logging.getLogger(__name__)


class WorkerGone(Exception):
    """The worker's process died or cannot be reached."""


class ClaimFailed(Exception):
    """The worker is fine but could not take the stream now (its claim's Redis call failed)."""


class ClaimRefused(Exception):
    """The stream can never be claimed as its keys are (one holds another type): it fails."""


class WorkerPool(Protocol):
    def start(self) -> list[WorkerInfo]:
        """Create and load every worker; raises FpnstreamError if they cannot start."""

    def poll(self, timeout_s: float) -> list[WorkerStatus | WorkerGone | None]:
        """Every worker's status: None for no answer within `timeout_s`."""

    def assign(self, index: int, spec: SourceSpec, owner: str, restart: bool, known: Resume | None = None) -> Assignment:
        """The worker claims the stream (fenced by `owner`) and starts it; returns its first
        frame index and whether its tracks were restored. Raises WorkerGone, ClaimFailed or ClaimRefused."""

    def unassign(self, index: int, stream_id: str) -> None: ...

    def reload(self, index: int) -> WorkerInfo | None:
        """Load a worker that was restarted; None while that is still under way. Raises
        WorkerGone if loading failed (it is tried again on the next call)."""

    def restart(self, index: int) -> None:
        """A hung worker: throw it away and start it afresh (empty, to be reloaded)."""

    def drain(self, grace_s: float, indices: list[int]) -> dict[int, WorkerStatus]:
        """Those workers stop reading and finish what they decoded; their final status."""

    def grow(self) -> int:
        """Start one more worker (loading in the background); returns its index."""

    def spare_capacity(self) -> bool:
        """Whether the cluster has room for one more worker now."""

    def request_capacity(self, workers: int) -> None:
        """Ask the cluster's autoscaler for room for `workers` workers in all."""

    def close(self) -> None: ...


class LocalPool:
    """Workers in this process. A restarted worker is a new `StreamWorker`; the old one's
    stuck lane (if it hung) is left behind as an idle daemon thread."""

    def __init__(self, cfg: AppConfig, redis_url: str, metrics: Metrics | None = None, size: int = 1) -> None:
        self._make = lambda: StreamWorker(cfg, redis_url, metrics)
        self._workers = [self._make() for _ in range(size)]

    def start(self) -> list[WorkerInfo]:
        return [w.load() for w in self._workers]

    def poll(self, timeout_s: float) -> list[WorkerStatus | WorkerGone | None]:
        return [w.status() for w in self._workers]

    def assign(self, index: int, spec: SourceSpec, owner: str, restart: bool, known: Resume | None = None) -> Assignment:
        try:
            return self._workers[index].assign(spec, owner, restart, known)
        except StreamUnwritable as e:
            raise ClaimRefused(str(e)) from None
        except redis.RedisError as e:
            raise ClaimFailed(redact_text(str(e))) from None

    def unassign(self, index: int, stream_id: str) -> None:
        self._workers[index].unassign(stream_id)

    def reload(self, index: int) -> WorkerInfo | None:
        try:
            return self._workers[index].load()
        except Exception as e:
            raise WorkerGone(f"{type(e).__name__}: {redact_text(str(e))}") from None

    def restart(self, index: int) -> None:
        self._workers[index].abandon()
        self._workers[index] = self._make()

    def drain(self, grace_s: float, indices: list[int]) -> dict[int, WorkerStatus]:
        return {i: self._workers[i].drain(grace_s) for i in indices}

    def grow(self) -> int:
        raise NotImplementedError("an in-process pool has a fixed size")

    def spare_capacity(self) -> bool:
        return False  # one process: nothing joins

    def request_capacity(self, workers: int) -> None:
        pass

    def close(self) -> None:
        for w in self._workers:
            w.close()
