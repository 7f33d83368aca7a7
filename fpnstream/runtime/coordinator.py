"""The coordinator: which worker feeds which stream, and what to do when a worker fails.

Plain policy over a `WorkerPool` (workers in this process, or Ray actors); it knows
nothing of Ray, so `--in-process` and a cluster run follow the same rules:
- a worker that dies, stops answering (`ray.poll_misses` polls in a row) or hangs (a batch
  running far past its usual time, `HangPolicy`) loses its streams to healthy workers; the
  new owner's claim fences the old one off, so no frame is written twice;
- a hung worker is restarted; a restarted worker is loaded again and takes streams again;
- a stream's first start in a job resumes its last run if that was cut short, else starts
  a new run (`StatusBoard.starts_new_run`).
"""

from __future__ import annotations


import logging
import math
import os
import time
import uuid
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Mapping

from fpnstream.config.settings import AppConfig, SourceConfig, stream_tracking
from fpnstream.core.redact import redact_text
from fpnstream.core.reports import JobSnapshot, Resume, RunReport, StreamReport, StreamRow, StreamState, WorkerStatus
from fpnstream.observe.metrics import DriverMetrics
from fpnstream.publish.control import expand_env
from fpnstream.runtime.control_commands import ControlCommands
from fpnstream.runtime.pool import ClaimFailed, ClaimRefused, WorkerGone, WorkerPool
from fpnstream.runtime.roster import WorkerRoster, WorkerState
from fpnstream.runtime.scaling import Placement, PoolScaler, ScalingPolicy
from fpnstream.runtime.status_board import StatusBoard
from fpnstream.sources import SourceSpec, resolve_sources

log = logging.getLogger(__name__)


# A stream whose worker's pipeline failed this many times in a row, none of its frames
# published in between, fails with the worker's error instead of being moved again.
MAX_CRASHES = 3
_BROKE = ("failed", "died", "hung")  # the worker broke while it held the stream (not: it was slow to answer)


@dataclass
class _Stream:
    spec: SourceSpec
    worker: int | None = None
    restart: bool | None = None  # next claim starts a new run; None: not decided yet (needs Redis)
    tried: str = ""  # the owner token of a claim that failed: it may have been made all the same
    ended: StreamState | None = None
    report: StreamReport | None = None  # the owner's latest
    moves: int = 0
    start: int = 0  # the first frame its current owner publishes (a file's resume point)
    last_move: str = ""
    displaced: str = ""  # why it lost its worker, until another one has claimed it
    moved_at: float = -math.inf  # when it was last moved to balance load (monotonic)
    crashes: int = 0  # its worker broke, in a row, with none of its frames published in between
    known: Resume | None = None  # its run and how far it was seen published, should Redis lose them

    def crashed(self, reason: str, detail: str) -> bool:
        """Its worker went down for `reason`; True when that ends the stream: a detector
        that fails on every batch restarted its worker for ever, and the job never ended."""
        self.crashes = self.crashes + 1 if reason in _BROKE else 0
        if self.crashes < MAX_CRASHES:
            return False
        self.ended, self.worker = StreamState.FAILED, None
        why = f"its worker failed {self.crashes} times in a row before it published a frame; last: {detail}"
        self.report = replace(self.report or StreamReport(self.spec.stream_id), state=StreamState.FAILED, error=why)
        log.error("stream %s: %s", self.spec.stream_id, why)
        return True


def _status_fields(sid: str, s: _Stream) -> dict:
    """A stream's status hash as the coordinator writes it."""
    rep = s.report or StreamReport(sid)
    state = s.ended or rep.state
    if s.ended is None and s.worker is None:
        state = StreamState.WAITING_FOR_WORKER
    # `uri` and `live` every time too: a write skipped while Redis was away is made up by the next.
    return {"state": state, "uri": s.spec.display, "live": int(s.spec.live),
            "worker": "" if s.worker is None else s.worker, "fps": round(rep.fps, 2),
            "decoded": rep.decoded, "dropped": rep.dropped, "last_frame_ts": rep.last_frame_ts,
            "error": redact_text(rep.error or ""), "moves": s.moves, "last_move": s.last_move,
            "reconnects": rep.reconnects}


def _row(sid: str, s: _Stream) -> StreamRow:
    """A stream's line in the operator's view."""
    rep = s.report or StreamReport(sid)
    state = s.ended or (rep.state if s.worker is not None else StreamState.WAITING_FOR_WORKER)
    done = s.start + rep.published if not s.spec.live else rep.published
    return StreamRow(sid, state, s.worker, done, rep.total, rep.fps, rep.latency_s, dict(rep.dropped))


def _take_report(s: _Stream, index: int, rep: StreamReport) -> None:
    """Worker `index`'s report on stream `s`; one from a worker that is not its owner is old news."""
    if s.worker != index:
        return
    if rep.state in (StreamState.MOVED, StreamState.STOPPED) and s.ended is None:
        # MOVED: fenced while it is the owner, by a claim this coordinator did not make last
        # (one it gave up on that ran after all, or a writer outside the job). STOPPED, not
        # asked for (a stream this coordinator stops has ended here first): an unassign it
        # gave up on (timed out) that ran after all. Left so, the stream would never end, or
        # end short; claimed again (`_rebalance`), it resumes after its last published frame.
        why = "fenced by another claim" if rep.state == StreamState.MOVED else "stopped reading it unasked"
        s.worker, s.displaced = None, f"worker {index} {why}"
        return
    if rep.state == StreamState.MOVED:
        return
    s.report = rep
    if s.known is not None and rep.next_frame > s.known.next_frame:
        s.known = replace(s.known, next_frame=rep.next_frame)
    if rep.published:
        s.crashes = 0  # it makes progress on this worker
    if rep.state.ended and s.ended is None:
        s.ended = rep.state


class Coordinator:
    def __init__(self, cfg: AppConfig, pool: WorkerPool, board: StatusBoard, driver_metrics: DriverMetrics,
                 on_worker_metrics: Callable[[int, str], None] = lambda i, text: None,
                 environ: Mapping[str, str] = os.environ) -> None:
        """`on_worker_metrics`: each worker's exposition text, after every poll (a cluster
        merges them into one scrape endpoint; in-process the worker's registry is served)."""
        self._cfg = cfg
        self._pool = pool
        self._board = board
        self._driver_metrics = driver_metrics
        self._environ = environ
        self._roster = WorkerRoster(pool, cfg.ray, board, driver_metrics, on_worker_metrics)
        elastic = cfg.ray.num_actors is None and not cfg.ray.in_process
        self._scaler = PoolScaler(ScalingPolicy(cfg.ray, elastic), self._roster, pool, driver_metrics)
        self._streams: dict[str, _Stream] = {}
        running = lambda sid: sid in self._streams and self._streams[sid].ended is None  # noqa: E731
        self._commands = ControlCommands(self.add_streams, self.remove_stream, running, board.write)

    # -- workers -----------------------------------------------------------------------------
    def start_workers(self) -> None:
        self._roster.start()

    def _assign(self, s: _Stream, target: WorkerState | None = None) -> None:
        s.worker = None  # until a worker has claimed it; waits for Redis or a worker otherwise
        if s.restart is None:  # first start in this job: resume a cut-short run, or a new run
            s.restart = self._board.starts_new_run(s.spec.stream_id, self._cfg.restart)
        if s.restart and s.tried and self._board.claimed_by(s.spec.stream_id, s.tried):
            s.restart = False  # its reply was lost, its new run started: this claim goes on in it
        w = target or self._roster.least_loaded([x.worker for x in self._streams.values() if x.ended is None])
        if w is None or s.restart is None or not self._board.up:
            return
        owner = s.tried = uuid.uuid4().hex
        try:
            took = self._pool.assign(w.index, s.spec, owner, s.restart, None if s.restart else s.known)
        except WorkerGone as e:
            log.warning("worker %d unavailable (%s); retrying stream %s elsewhere", w.index, e, s.spec.stream_id)
            self._roster.mark_down(w, "unavailable")
            return
        except ClaimFailed as e:  # the worker is fine; Redis was not: try again on a later tick
            log.warning("stream %s not assigned yet: %s", s.spec.stream_id, str(e).splitlines()[0] if str(e) else "")
            return
        except ClaimRefused as e:  # its keys can never take its frames: it fails, the job goes on
            log.error("%s", e)
            s.ended = StreamState.FAILED
            s.report = replace(s.report or StreamReport(s.spec.stream_id), state=StreamState.FAILED, error=str(e))
            return
        s.worker, s.start, s.tried = w.index, took.start, ""
        s.known = Resume(took.run, max(took.start, s.known.next_frame if s.known and s.known.run == took.run else 0))
        if took.recovered:
            log.warning("stream %s: Redis had no record of its run %d (restarted without its data?); it goes on "
                        "at frame %d, after the frames this job saw published", s.spec.stream_id, took.run, took.start)
        elif not s.restart:
            log.info("stream %s on worker %d resumes its run at frame %d%s", s.spec.stream_id, w.index, took.start,
                     ", its tracks restored" if took.tracks_restored else "")
        s.restart = False

    # -- streams -----------------------------------------------------------------------------
    def add_streams(self, configs: Iterable[SourceConfig]) -> list[str]:
        configs = list(configs)
        for c in configs:  # checked as a whole before any is added (ValueError: the command is refused)
            stream_tracking(c, self._cfg.tracking)
        existing = [SourceConfig(uri=s.spec.uri, id=sid) for sid, s in self._streams.items() if s.ended is None]
        specs = resolve_sources([*existing, *configs])[len(existing):]
        added = []
        for spec in specs:
            spec = replace(spec, uri=expand_env(spec.uri, self._environ))
            s = self._streams[spec.stream_id] = _Stream(spec, restart=True if self._cfg.restart else None)
            self._assign(s)  # before the status write below: the run decision reads the last state
            self._board.write(spec.stream_id, {"state": StreamState.STARTING, "uri": spec.display,
                                               "live": int(spec.live), "error": ""})
            added.append(spec.stream_id)
        return added

    def remove_stream(self, stream_id: str) -> bool:
        s = self._streams.get(stream_id)
        if s is None or s.ended is not None:
            return False
        if s.worker is not None:
            try:
                self._pool.unassign(s.worker, stream_id)
            except WorkerGone:
                pass
        s.ended = StreamState.STOPPED
        self._board.write(stream_id, {"state": StreamState.STOPPED})
        return True

    # -- the periodic steps ------------------------------------------------------------------
    def tick(self) -> None:
        self._board.probe()
        for index, st in self._roster.poll():
            self._take_reports(index, st)
        self._rebalance()
        self._scaler.tick([Placement(sid, s.worker, s.report.fps if s.report else 0.0, s.moved_at)
                           for sid, s in self._streams.items() if s.ended is None and s.worker is not None],
                          self._move)
        self._roster.record()
        for cmd in self._board.read_commands():
            self._commands.apply(cmd)
        self._write_status()

    def _take_reports(self, index: int, st: WorkerStatus) -> None:
        for sid, rep in st.streams.items():
            if (s := self._streams.get(sid)) is not None:
                _take_report(s, index, rep)

    def _move(self, stream_id: str, dst: int) -> bool:
        """A graceful hand-off to balance load: the old worker stops reading (what it decoded
        is still published), the new one claims with the fence and resumes after the last
        published frame, so a file loses nothing and repeats nothing."""
        s = self._streams[stream_id]
        src = s.worker
        try:
            self._pool.unassign(src, stream_id)
        except WorkerGone:
            return False  # the next poll sees it; the stream moves as from a dead worker
        self._assign(s, self._roster.workers[dst])
        if s.worker is None:
            return False  # Redis or the target said no: `_rebalance` places it on a later tick
        s.moves += 1
        s.moved_at = time.monotonic()
        s.last_move = f"balanced from worker {src}"
        self._driver_metrics.stream_moves.labels("balance").inc()
        log.info("stream %s moved from worker %d to worker %d to balance load", stream_id, src, s.worker)
        return True

    def _rebalance(self) -> None:
        """Give every running stream whose worker is down (or none) to a healthy worker."""
        for s in self._streams.values():
            if s.ended is not None:
                continue
            if s.worker is None or not self._roster.workers[s.worker].healthy:
                if s.worker is not None:
                    w = self._roster.workers[s.worker]
                    s.displaced = f"worker {s.worker} {w.down_reason or 'down'}"
                    self._driver_metrics.stream_moves.labels(w.down_reason or "down").inc()
                    if s.crashed(w.down_reason, w.down_detail):  # its worker failed again and again
                        continue
                self._assign(s)
                if s.worker is not None and s.displaced:
                    s.moves += 1
                    s.last_move, s.displaced = s.displaced, ""

    def _write_status(self) -> None:
        if self._board.up:  # while Redis is away, rewritten in full on the first tick after
            self._board.write_all({sid: _status_fields(sid, s) for sid, s in self._streams.items()})

    # -- lifecycle ---------------------------------------------------------------------------
    def ready(self) -> bool:
        """Ready when at least one worker can take streams and Redis answers."""
        return self._board.up and bool(self._roster.healthy())

    def all_ended(self) -> bool:
        return all(s.ended is not None for s in self._streams.values())

    def only_publishing_left(self) -> bool:
        """Every stream that has not ended is a file with nothing left to decode, or one
        not claimed yet: only Redis can move the job on (see `fail_open_streams`)."""
        left = [s for s in self._streams.values() if s.ended is None]
        return bool(left) and all(not s.spec.live and (s.worker is None or s.report is not None and
                                                       s.report.state == StreamState.DRAINING) for s in left)

    def fail_open_streams(self, why: str) -> None:
        for sid, s in self._streams.items():
            if s.ended is None:
                s.ended = StreamState.FAILED
                s.report = replace(s.report or StreamReport(sid), state=StreamState.FAILED, error=why)

    def snapshot(self, seconds: float) -> JobSnapshot:
        """The operator's view of the job now."""
        rows = [_row(sid, s) for sid, s in self._streams.items()]
        workers = tuple((w.index, w.healthy, w.info.device if w.info else "", w.batch_s) for w in self._roster.workers)
        return JobSnapshot(seconds, self._board.up, workers, tuple(rows))

    def drain(self, grace_s: float) -> None:
        for idx, st in self._pool.drain(grace_s, [w.index for w in self._roster.healthy()]).items():
            for sid, rep in st.streams.items():
                s = self._streams.get(sid)
                if s is not None and s.worker == idx:
                    # A stream failed here (e.g. Redis gone for good) keeps the reason it failed for.
                    failed_for = s.report.error if s.ended == StreamState.FAILED and s.report else None
                    s.report = replace(rep, error=failed_for) if failed_for else rep
                    if s.ended is None:
                        s.ended = rep.state if rep.state.ended else StreamState.STOPPED
        self._write_status()

    def report(self, seconds: float) -> RunReport:
        out = {}
        for sid, s in self._streams.items():
            rep = replace(s.report or StreamReport(sid), live=s.spec.live)
            rep.state = s.ended or rep.state
            # The status hash counts every owner's frames; if Redis is away now, the last owner's count.
            published = self._board.published(sid)
            rep.published = published if published is not None else rep.published
            if s.moves and rep.state == StreamState.FINISHED:
                rep.decoded = rep.published  # earlier owners' counts died with them
            out[sid] = rep
        return RunReport(out, seconds)
