"""What the stages report about streams and workers: states as an enum, per-stream reports,
and the typed status a worker hands its coordinator (across Ray, or in this process)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from fpnstream.core.health import DetectorProgress


class StreamState(str, Enum):
    """A stream's state, as `fpnstream streams list` and the status hash show it."""

    STARTING = "starting"
    STREAMING = "streaming"
    DRAINING = "draining"  # the source ended; its frames are still in flight
    CONNECTING = "connecting"  # live sources, between connections...
    BACKING_OFF = "backing_off"  # ...and while waiting to reconnect
    WAITING_FOR_WORKER = "waiting_for_worker"  # the coordinator has no worker for it yet
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"
    MOVED = "moved"  # another worker owns it now (seen only by the one it left)

    def __str__(self) -> str:  # the value in logs, Redis and JSON, not "StreamState.X"
        return self.value

    @property
    def ended(self) -> bool:
        return self in ENDED_STATES


ENDED_STATES = frozenset({StreamState.FINISHED, StreamState.STOPPED, StreamState.FAILED, StreamState.MOVED})


@dataclass(frozen=True, slots=True)
class Assignment:
    """A worker took a stream: the first frame it publishes, and whether the stream's saved
    tracks were restored (so its track ids go on)."""

    start: int
    tracks_restored: bool = False
    run: int = 1  # the run the stream is in
    recovered: bool = False  # Redis had no record of that run: it came from the job's `Resume`


@dataclass(frozen=True, slots=True)
class Resume:
    """What the job knows of a stream's current run, for a claim that finds no record of it
    in Redis (Redis restarted without its data before the writer could write the claim
    back): the run, and one past the newest frame the job saw published. Never used while
    Redis has the record, so a figure that is behind costs repeats only after such a loss."""

    run: int
    next_frame: int


@dataclass
class StreamReport:
    stream_id: str
    live: bool = False
    state: StreamState = StreamState.STARTING
    decoded: int = 0
    published: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    warning: str | None = None
    error: str | None = None
    last_frame_ts: float | None = None  # wall time of the newest published frame
    fps: float = 0.0  # published frames per second, smoothed
    reconnects: int = 0
    total: int | None = None  # a file's frames, when its header says (for progress and ETA)
    latency_s: float = 0.0  # capture -> published, smoothed over recent frames
    next_frame: int = 0  # one past the newest frame published by this claim (see `Resume`)


@dataclass
class RunReport:
    streams: dict[str, StreamReport]
    seconds: float

    @property
    def published(self) -> int:
        return sum(s.published for s in self.streams.values())


@dataclass(frozen=True)
class WorkerInfo:
    """Where a loaded worker runs, for operators and fault-injection tests."""

    incarnation: str  # changes when the worker's process is restarted
    model: str
    device: str
    host: str
    pid: int


@dataclass(frozen=True)
class WorkerStatus:
    """One status poll's answer; `loaded` is False until load() ran in this incarnation."""

    incarnation: str
    loaded: bool
    streams: dict[str, StreamReport] = field(default_factory=dict)
    progress: DetectorProgress = DetectorProgress(0.0, 0.0)
    metrics: str = ""  # the worker's Prometheus exposition text
    # Why its pipeline stopped ("" while it runs): an internal error (a detector exception,
    # a bug) ends a worker's pipeline; the coordinator then restarts it and moves its streams.
    failure: str = ""


@dataclass(frozen=True)
class StreamRow:
    """One stream in the operator's view of a running job."""

    stream_id: str
    state: StreamState
    worker: int | None
    done: int  # frames of the current run in Redis (a file: its position)
    total: int | None  # a file's length, if known
    fps: float
    latency_s: float
    dropped: dict[str, int]


@dataclass(frozen=True)
class JobSnapshot:
    """What `fpnstream run` shows while it runs (a live table on a terminal, log lines else)."""

    seconds: float
    redis_up: bool
    workers: tuple[tuple[int, bool, str, float], ...]  # index, healthy, device, recent batch seconds
    streams: tuple[StreamRow, ...]
