"""Many streams on a Ray cluster: a pool of StreamWorker actors and the coordinator that
assigns streams to them, moves streams off dead workers and applies runtime commands.

Ray does placement (SPREAD over nodes, GPUs per actor) and restarts dead actors; the
coordinator only decides which worker feeds which stream.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

import ray
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from fpnstream.config import AppConfig, SourceConfig
from fpnstream.control import control_key, expand_env, workers_key, write_status
from fpnstream.errors import FpnstreamError, ModelError
from fpnstream.pipeline import ENDED_STATES, FINISHED, MOVED, RunReport, StreamReport
from fpnstream.redact import redact_text
from fpnstream.sources import SourceSpec, resolve_sources
from fpnstream.worker import StreamWorker

log = logging.getLogger(__name__)


def connect(cfg: AppConfig) -> None:
    """Join the cluster at `ray.address`, or start a private local Ray."""
    if ray.is_initialized():
        return
    kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, configure_logging=True, log_to_driver=True)
    # Ray's core installs its own SIGTERM handler (log and die); ours must win so a SIGTERM
    # drains in-flight frames instead of losing them.
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if cfg.ray.address:
            ray.init(address=cfg.ray.address, **kwargs)
        else:
            # "local" always starts a private instance, even if `ray start` runs on this machine.
            ray.init(address="local", num_cpus=cfg.ray.num_cpus, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = cfg.ray.address or "a local instance"
        raise FpnstreamError(f"cannot start or join Ray ({where}): {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if threading.current_thread() is threading.main_thread():
        for sig, handler in previous.items():
            if callable(handler):
                signal.signal(sig, handler)


class WorkerMetrics:
    """One scrape endpoint for the whole cluster: re-exports each worker's metrics with a
    `worker` label (workers send their exposition text with every status poll)."""

    def __init__(self) -> None:
        self._texts: dict[str, str] = {}
        self._lock = threading.Lock()

    def update(self, worker: str, text: str) -> None:
        with self._lock:
            self._texts[worker] = text

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            texts = dict(self._texts)
        merged: dict[str, Metric] = {}
        for worker, text in texts.items():
            for fam in text_string_to_metric_families(text):
                out = merged.setdefault(fam.name, Metric(fam.name, fam.documentation, fam.type))
                for s in fam.samples:
                    out.add_sample(s.name, {**s.labels, "worker": worker}, s.value, s.timestamp, s.exemplar)
        return list(merged.values())


@dataclass
class _Worker:
    index: int
    actor: Any
    incarnation: str | None = None
    healthy: bool = False
    loading: Any = None  # ObjectRef of a load() in progress
    misses: int = 0  # status polls in a row without an answer
    streams: dict[str, Any] = field(default_factory=dict)  # last reported StreamReport dicts
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Stream:
    spec: SourceSpec
    worker: int | None = None
    owner: str = ""
    restart: bool = True  # first assignment of this run starts the stream's progress over
    ended: str | None = None
    report: dict[str, Any] = field(default_factory=dict)
    moves: int = 0


class Coordinator:
    MAX_MISSES = 3  # status polls (5 s each) without an answer before a worker counts as down

    def __init__(self, cfg: AppConfig, redis_client, redis_url: str, metrics: WorkerMetrics,
                 environ: Mapping[str, str] = os.environ) -> None:
        self._cfg = cfg
        self._redis = redis_client
        self._redis_url = redis_url
        self._metrics = metrics
        self._environ = environ
        self._prefix = cfg.redis.prefix
        self._workers: list[_Worker] = []
        self._streams: dict[str, _Stream] = {}
        self._control_last = "$"

    # -- workers -----------------------------------------------------------------------------
    def start_workers(self) -> None:
        gpus = ray.cluster_resources().get("GPU", 0.0)
        use_gpu = self._cfg.model.device == "cuda" or (self._cfg.model.device == "auto" and gpus > 0)
        if self._cfg.model.device == "cuda" and gpus == 0:
            raise ModelError("device 'cuda' requested but the Ray cluster has no GPUs")
        rc = self._cfg.ray
        n = rc.num_actors or (max(1, int(gpus // rc.num_gpus_per_actor)) if use_gpu else 1)
        num_cpus = rc.num_cpus_per_actor
        if not use_gpu and n == 1 and rc.address is None and "num_cpus_per_actor" not in rc.model_fields_set:
            # The private local Ray of a laptop run: its one CPU worker may use every core.
            num_cpus = max(1.0, float(int(ray.cluster_resources().get("CPU", 1.0))))
        actor_cls = ray.remote(StreamWorker).options(
            num_gpus=rc.num_gpus_per_actor if use_gpu else 0,
            num_cpus=num_cpus,
            max_restarts=-1,  # Ray brings a dead worker back; we re-load and re-assign it
            max_concurrency=4,  # status polls must get through while a drain is running
            scheduling_strategy="SPREAD",
        )
        cfg = self._cfg
        if not use_gpu and cfg.model.torch_threads is None:
            # Ray starts a CPU actor with OMP_NUM_THREADS=1 whatever it reserved; use what it reserved.
            threads = max(1, int(num_cpus))
            cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"torch_threads": threads})})
        self._workers = [_Worker(i, actor_cls.remote(cfg, self._redis_url)) for i in range(n)]
        try:
            infos = ray.get([w.actor.load.remote() for w in self._workers])
        except RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, FpnstreamError):
                raise cause from None
            raise ModelError(f"stream worker failed to start: {type(cause or e).__name__}: {cause or e}") from None
        except RayActorError as e:
            raise ModelError(f"stream worker died while starting: {str(e).splitlines()[0]}") from None
        for w, info in zip(self._workers, infos):
            w.incarnation, w.healthy, w.info = info["incarnation"], True, info
            self._record_worker(w)
        log.info("%d stream worker(s) ready: %s on %s", n, infos[0]["model"], infos[0]["device"])

    def _record_worker(self, w: _Worker) -> None:
        """Where each worker runs (host, pid), for operators and for fault-injection tests."""
        self._redis.hset(workers_key(self._prefix), str(w.index), json.dumps(w.info))

    def _pick_worker(self) -> _Worker | None:
        healthy = [w for w in self._workers if w.healthy]
        if not healthy:
            return None
        load = {w.index: 0 for w in healthy}
        for s in self._streams.values():
            if s.ended is None and s.worker in load:
                load[s.worker] += 1
        return min(healthy, key=lambda w: (load[w.index], w.index))

    def _assign(self, s: _Stream) -> None:
        w = self._pick_worker()
        if w is None:
            s.worker = None  # waits for a worker to come back
            return
        s.worker, s.owner = w.index, uuid.uuid4().hex
        try:
            start = ray.get(w.actor.assign.remote(s.spec, s.owner, s.restart), timeout=30)
        except (RayActorError, GetTimeoutError) as e:
            log.warning("worker %d unavailable (%s); retrying stream %s elsewhere", w.index, type(e).__name__, s.spec.stream_id)
            w.healthy = False
            s.worker = None
            return
        if not s.restart:
            log.info("stream %s moved to worker %d, resuming at frame %d", s.spec.stream_id, w.index, start)
        s.restart = False

    # -- streams -----------------------------------------------------------------------------
    def add_streams(self, configs: Iterable[SourceConfig]) -> list[str]:
        existing = [SourceConfig(uri=s.spec.uri, id=sid) for sid, s in self._streams.items() if s.ended is None]
        new = list(configs)
        specs = resolve_sources([*existing, *new])[len(existing):]
        added = []
        for spec in specs:
            spec = replace(spec, uri=expand_env(spec.uri, self._environ))
            s = self._streams[spec.stream_id] = _Stream(spec)
            write_status(self._redis, self._prefix, spec.stream_id,
                         {"state": "starting", "uri": spec.display, "live": int(spec.live), "error": ""})
            self._assign(s)
            added.append(spec.stream_id)
        return added

    def remove_stream(self, stream_id: str) -> bool:
        s = self._streams.get(stream_id)
        if s is None or s.ended is not None:
            return False
        if s.worker is not None:
            try:
                ray.get(self._workers[s.worker].actor.unassign.remote(stream_id), timeout=10)
            except (RayActorError, GetTimeoutError):
                pass
        s.ended = "stopped"
        write_status(self._redis, self._prefix, stream_id, {"state": "stopped"})
        return True

    # -- the periodic steps ------------------------------------------------------------------
    def tick(self) -> None:
        self._poll_workers()
        self._rebalance()
        self._poll_control()
        self._write_status()

    def _poll_workers(self) -> None:
        refs = {w.index: w.actor.status.remote() for w in self._workers}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=5.0)
        ready_set = set(ready)
        for w in self._workers:
            ref = refs[w.index]
            if ref not in ready_set:
                # A busy worker can miss a poll (its threads hold the CPU); only a run of
                # misses means it is gone. A dead actor raises below, at once.
                w.misses += 1
                if w.misses >= self.MAX_MISSES:
                    self._mark_down(w, f"no answer to {w.misses} status polls")
                continue
            try:
                st = ray.get(ref)
            except (RayActorError, RayTaskError) as e:
                self._mark_down(w, type(e).__name__)
                continue
            if not st["loaded"] or st["incarnation"] != w.incarnation:
                self._restarted(w, st)
                continue
            w.misses = 0
            if not w.healthy and w.loading is None:
                log.info("worker %d answers again", w.index)
                w.healthy = True
            w.streams = st["streams"]
            self._metrics.update(str(w.index), st["metrics"])
            for sid, rep in st["streams"].items():
                s = self._streams.get(sid)
                if s is not None and s.worker == w.index and rep["state"] != MOVED:
                    s.report = rep
                    if rep["state"] in ENDED_STATES and s.ended is None:
                        s.ended = rep["state"]

    def _mark_down(self, w: _Worker, why: str) -> None:
        if w.healthy:
            log.warning("worker %d is down (%s); moving its streams", w.index, why)
        w.healthy = False

    def _restarted(self, w: _Worker, st: dict) -> None:
        """Ray restarted the actor: it lost its model and streams. Load it again (async)."""
        if w.loading is None:
            log.warning("worker %d was restarted by Ray; reloading it", w.index)
            w.healthy = False
            w.loading = w.actor.load.remote()
            return
        ready, _ = ray.wait([w.loading], timeout=0)
        if ready:
            try:
                info = ray.get(w.loading)
                w.incarnation, w.info, w.healthy = info["incarnation"], info, True
                self._record_worker(w)
                log.info("worker %d is back", w.index)
            except (RayActorError, RayTaskError) as e:
                log.warning("worker %d failed to reload: %s", w.index, type(e).__name__)
            w.loading = None

    def _rebalance(self) -> None:
        """Give every running stream whose worker is down (or none) to a healthy worker."""
        for s in self._streams.values():
            if s.ended is not None:
                continue
            if s.worker is None or not self._workers[s.worker].healthy:
                if s.worker is not None:
                    s.moves += 1
                self._assign(s)

    def _poll_control(self) -> None:
        try:
            reply = self._redis.xread({control_key(self._prefix): self._control_last}, count=100, block=None)
        except Exception as e:  # a control-channel hiccup must not stop detection
            log.warning("control channel unreadable: %s", redact_text(str(e)))
            return
        for _key, entries in reply or []:
            for entry_id, fields in entries:
                self._control_last = entry_id
                self._apply({k.decode(): v.decode() for k, v in fields.items()})

    def start_control(self) -> None:
        """Only commands sent after the job started count."""
        last = self._redis.xrevrange(control_key(self._prefix), count=1)
        self._control_last = last[0][0] if last else "0-0"

    def _apply(self, cmd: dict[str, str]) -> None:
        op = cmd.get("op")
        try:
            if op == "add":
                fps = float(cmd["fps"]) if cmd.get("fps") else None
                added = self.add_streams([SourceConfig(uri=cmd["uri"], id=cmd.get("id") or None, fps=fps)])
                log.info("control: added stream(s) %s", ", ".join(added))
            elif op == "remove":
                if self.remove_stream(cmd.get("id", "")):
                    log.info("control: removed stream %s", cmd["id"])
                else:
                    log.warning("control: no running stream %r to remove", cmd.get("id"))
            else:
                log.warning("control: unknown command %r ignored", op)
        except (FpnstreamError, ValueError, KeyError) as e:
            log.warning("control: %s command rejected: %s", op, redact_text(str(e)))
            if cmd.get("id"):
                write_status(self._redis, self._prefix, cmd["id"], {"state": "failed", "error": redact_text(str(e))})

    def _write_status(self) -> None:
        for sid, s in self._streams.items():
            rep = s.report
            state = s.ended or rep.get("state", "starting")
            if s.ended is None and s.worker is None:
                state = "waiting_for_worker"
            write_status(self._redis, self._prefix, sid, {
                "state": state,
                "worker": "" if s.worker is None else s.worker,
                "fps": round(rep.get("fps", 0.0), 2),
                "decoded": rep.get("decoded", 0),
                "dropped": rep.get("dropped", {}),
                "last_frame_ts": rep.get("last_frame_ts"),
                "error": redact_text(rep.get("error") or ""),
                "moves": s.moves,
                "reconnects": rep.get("reconnects", 0),
            })

    # -- lifecycle ---------------------------------------------------------------------------
    def ready(self) -> bool:
        """Ready when at least one worker can take streams and Redis answers."""
        return any(w.healthy for w in self._workers) and bool(self._redis.ping())

    def all_ended(self) -> bool:
        return all(s.ended is not None for s in self._streams.values())

    def drain(self, grace_s: float) -> None:
        refs = {w.index: w.actor.drain.remote(grace_s) for w in self._workers if w.healthy}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=grace_s + 5)
        for idx, ref in refs.items():
            if ref in ready:
                try:
                    st = ray.get(ref)
                except (RayActorError, RayTaskError):
                    continue
                for sid, rep in st["streams"].items():
                    s = self._streams.get(sid)
                    if s is not None and s.worker == idx:
                        s.report = rep
                        if s.ended is None:
                            s.ended = rep["state"] if rep["state"] in ENDED_STATES else "stopped"
        self._write_status()

    def report(self, seconds: float) -> RunReport:
        out = {}
        for sid, s in self._streams.items():
            rep = s.report
            published = int(self._redis.hget(f"{self._prefix}:status:{sid}", "published") or 0)
            out[sid] = StreamReport(
                sid, live=s.spec.live, state=s.ended or rep.get("state", "starting"), decoded=rep.get("decoded", 0),
                published=published, dropped=rep.get("dropped", {}), warning=rep.get("warning"), error=rep.get("error"),
                reconnects=rep.get("reconnects", 0),
            )
            if s.moves and out[sid].state == FINISHED:
                out[sid].decoded = published  # earlier owners' counts died with them
        return RunReport(out, seconds)

    def close(self) -> None:
        for w in self._workers:
            try:
                ray.kill(w.actor)
            except Exception:
                pass


def run_cluster(cfg: AppConfig, specs_cfg: list[SourceConfig], redis_client, redis_url: str,
                metrics: WorkerMetrics, stop: threading.Event, server=None) -> RunReport:
    started = time.monotonic()
    coord = Coordinator(cfg, redis_client, redis_url, metrics)
    if server is not None:
        server.ready = coord.ready
    try:
        coord.start_workers()
        coord.start_control()
        coord.add_streams(specs_cfg)
        while not stop.is_set():
            coord.tick()
            if not cfg.keep_alive and coord.all_ended():
                break
            stop.wait(0.5)
        if stop.is_set():
            log.info("stopping: draining workers (grace %.0f s)", cfg.stop_grace_s)
        # Also after a normal end: frames of streams that failed or were removed may still
        # be queued, and they were accepted, so they get published.
        coord.drain(cfg.stop_grace_s)
        return coord.report(time.monotonic() - started)
    finally:
        coord.close()

