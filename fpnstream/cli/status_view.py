"""What `fpnstream run` shows while it runs.

On a terminal: a live table (rich), one row per stream (state, frames published / total
and ETA for files, fps, capture -> publish latency, drops by reason) under a header for
the job (workers, device, batch time, Redis). Log lines print above it, never through it,
and it is gone when the run ends. Not on a terminal (CI, systemd, Kubernetes): one compact
log line per stream every `status_interval_s` seconds.
"""

from __future__ import annotations

import logging
import sys
import time

from fpnstream.core.reports import JobSnapshot, StreamRow

log = logging.getLogger("fpnstream.status")


def _eta(row: StreamRow) -> str:
    if not row.total or row.fps <= 0 or row.done >= row.total:
        return ""
    s = int((row.total - row.done) / row.fps)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _progress(row: StreamRow) -> str:
    return f"{row.done}/{row.total}" if row.total else str(row.done)


def _drops(row: StreamRow) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(row.dropped.items()) if v) or "-"


def _header(snap: JobSnapshot) -> str:
    healthy = sum(1 for _, ok, _, _ in snap.workers if ok)
    devices = sorted({d for _, _, d, _ in snap.workers if d})
    batch = max((b for _, ok, _, b in snap.workers if ok), default=0.0)
    return (f"fpnstream  {int(snap.seconds) // 60}:{int(snap.seconds) % 60:02d}  workers {healthy}/{len(snap.workers)} "
            f"on {', '.join(devices) or '-'}  batch {batch * 1000:.0f} ms  Redis {'up' if snap.redis_up else 'DOWN'}")


def line(row: StreamRow) -> str:
    """The compact one-line form, for logs."""
    eta = _eta(row)
    return (f"stream {row.stream_id}: {row.state} {_progress(row)} frames{f' (eta {eta})' if eta else ''}, "
            f"{row.fps:.1f} fps, latency {row.latency_s * 1000:.0f} ms, dropped {_drops(row)}")


class LogStatus:
    """Not a terminal: every `interval_s`, one log line for the job and one per stream."""

    def __init__(self, interval_s: float) -> None:
        self._interval = interval_s
        self._next = time.monotonic() + interval_s

    def __call__(self, snap: JobSnapshot) -> None:
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self._interval
        log.info("%s", _header(snap))
        for row in snap.streams:
            log.info("%s", line(row))

    def close(self) -> None:
        pass


class LiveStatus:
    """A terminal: a table redrawn in place; the log handler writes above it meanwhile."""

    def __init__(self, handler: logging.StreamHandler) -> None:
        from rich.console import Console
        from rich.live import Live

        self._handler = handler
        self._live = Live(console=Console(file=sys.stderr), refresh_per_second=2, transient=True, redirect_stderr=True)
        self._live.start()
        # Log records go through the console, above the table, not into it.
        self._previous = handler.setStream(sys.stderr)

    def __call__(self, snap: JobSnapshot) -> None:
        from rich.table import Table

        table = Table(title=_header(snap), title_justify="left", expand=False)
        for col, just in (("stream", "left"), ("state", "left"), ("frames", "right"), ("eta", "right"),
                          ("fps", "right"), ("latency", "right"), ("dropped", "left")):
            table.add_column(col, justify=just)
        for row in snap.streams:
            table.add_row(row.stream_id, str(row.state), _progress(row), _eta(row), f"{row.fps:.1f}",
                          f"{row.latency_s * 1000:.0f} ms", _drops(row))
        self._live.update(table)

    def close(self) -> None:
        self._live.stop()  # transient: the table goes away, the logs above it stay
        self._handler.setStream(self._previous)


def status_view(interval_s: float, handler: logging.StreamHandler, tty: bool):
    """The view for this run: live on a terminal, log lines otherwise, none if `interval_s` is 0."""
    if interval_s <= 0:
        return None
    return LiveStatus(handler) if tty else LogStatus(interval_s)
