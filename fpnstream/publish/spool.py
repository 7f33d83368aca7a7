"""Results waiting for Redis: in memory up to a limit, then on disk up to a limit, oldest
first. Keeps detections through a Redis outage instead of dropping them silently."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import threading
from collections import deque
from pathlib import Path
from typing import Callable

from fpnstream.core.frames import BatchResult
from fpnstream.publish.spool_folder import hold, let_go

log = logging.getLogger(__name__)


class PublishBuffer:
    """A FIFO of BatchResults. Once the memory part is full, new batches go to disk (one file
    each) and keep going there until the disk part has drained, so order never changes."""

    def __init__(self, spool_dir: str | Path | None, memory_frames: int, spool_bytes: int,
                 on_drop: Callable[[BatchResult], None] | None = None) -> None:
        """`on_drop` (settable later): told about each batch dropped for lack of room."""
        self._memory: deque[BatchResult] = deque()
        self._memory_frames = 0
        self._max_memory_frames = memory_frames
        self._dir = Path(spool_dir) if spool_dir else None
        self._files: deque[tuple[Path, int, int]] = deque()  # path, bytes, frames
        self._spool_bytes = 0
        self._max_spool_bytes = spool_bytes
        self._seq = 0
        self._held: int | None = None  # the folder's lock while it exists (spool_folder.py)
        self.on_drop = on_drop
        self._lock = threading.Lock()

    @property
    def frames(self) -> int:
        with self._lock:
            return self._memory_frames + sum(f for _, _, f in self._files)

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._memory or self._files)

    def append(self, result: BatchResult) -> None:
        n = len(result.metas)
        with self._lock:
            # The batch being written now always fits (the limit is on what waits behind
            # it): with a limit of 0, or below a batch, a healthy Redis drops nothing.
            if not self._files and (not self._memory or self._memory_frames + n <= self._max_memory_frames):
                self._memory.append(result)
                self._memory_frames += n
                return
            if self._dir is None:
                self._drop(result, "no spool folder configured")
                return
            data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
            if self._spool_bytes + len(data) > self._max_spool_bytes:
                self._drop(result, f"spool full ({self._max_spool_bytes // 2**20} MiB)")
                return
            path = self._dir / f"{self._seq:012d}.batch"
            tmp = path.with_suffix(".tmp")
            try:
                if self._held is None:
                    self._held = hold(self._dir)
                tmp.write_bytes(data)
                os.replace(tmp, path)
            except OSError as e:
                # A full disk or a folder that cannot be made: the frames are lost like on a
                # full spool, counted, and the publisher goes on (it must not end the worker).
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
                if not self._files and self._held is not None:  # nothing in it: no folder left behind
                    let_go(self._dir, self._held)
                    self._held = None
                self._drop(result, f"the spool cannot be written ({e.strerror or e})")
                return
            self._seq += 1
            self._files.append((path, len(data), n))
            self._spool_bytes += len(data)

    def _drop(self, result: BatchResult, why: str) -> None:
        log.warning("Redis unreachable and %s: dropping %d frame(s)", why, len(result.metas))
        self.on_drop(result)

    def peek(self) -> BatchResult | None:
        with self._lock:
            if self._memory:
                return self._memory[0]
            if self._files:
                return pickle.loads(self._files[0][0].read_bytes())
            return None

    def pop(self) -> None:
        """Forget the oldest batch (it was published)."""
        with self._lock:
            if self._memory:
                self._memory_frames -= len(self._memory.popleft().metas)
            elif self._files:
                path, size, _ = self._files.popleft()
                self._spool_bytes -= size
                path.unlink(missing_ok=True)
                if not self._files and self._held is not None:  # the outage is over: no folder left behind
                    let_go(self._dir, self._held)
                    self._held = None

