"""`fpnstream run`: build the stages from a config, run them, clean up."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Callable

from prometheus_client import CollectorRegistry

from fpnstream.config.settings import AppConfig
from fpnstream.core.errors import ConfigError
from fpnstream.core.redact import redact_url
from fpnstream.core.reports import JobSnapshot, RunReport
from fpnstream.observe.merge import WorkerMetrics
from fpnstream.observe.metrics import DriverMetrics, Metrics, serve
from fpnstream.publish.connection import EmbeddedRedis, connect, is_cluster
from fpnstream.publish.control import control_end, expand_env, migrate_legacy_keys
from fpnstream.publish.job_lease import JobLease
from fpnstream.runtime.coordinator import Coordinator
from fpnstream.runtime.pool import LocalPool, WorkerPool
from fpnstream.runtime.redis_link import OutageDeadline
from fpnstream.runtime.status_board import StatusBoard
from fpnstream.sources import SourceSpec, VideoDecoder, resolve_sources

log = logging.getLogger(__name__)


def probe_sources(specs: list[SourceSpec], cfg: AppConfig) -> None:
    """Open every source once, in parallel, so bad input fails before anything runs."""

    def probe(spec: SourceSpec) -> None:
        d = VideoDecoder(spec, cfg.decode)
        try:
            d.open()
        finally:
            d.close()

    with ThreadPoolExecutor(max_workers=min(16, max(1, len(specs)))) as pool:
        for fut in [pool.submit(probe, s) for s in specs]:
            fut.result()  # the first failure, in source order


def _redis(cfg: AppConfig, stack: contextlib.ExitStack) -> str:
    if cfg.redis.url:
        return cfg.redis.url
    if cfg.ray.address and not cfg.ray.in_process:
        raise ConfigError("joining a Ray cluster needs --redis-url: workers on other nodes cannot reach an embedded Redis")
    embedded = stack.enter_context(EmbeddedRedis(cfg.redis.embedded_dir))
    log.info("embedded Redis at %s (data in %s)", embedded.url, embedded.data_dir)
    return embedded.url


def run_job(cfg: AppConfig, stop: threading.Event, environ=os.environ, metrics: Metrics | None = None,
            on_tick: Callable[[JobSnapshot], None] | None = None) -> RunReport:
    """Run the job: in this process (`ray.in_process`) or on Ray, by the same coordinator.
    `metrics`: record the in-process run here (benchmarks read the stage times back).
    `on_tick`: shown the job's state after every coordinator tick (the status view)."""
    specs = [replace(s, uri=expand_env(s.uri, environ)) for s in resolve_sources(cfg.sources)]
    if not specs and not cfg.keep_alive:
        raise ConfigError("no sources: pass --source [ID=]URI, list sources: in the config, or use --keep-alive")
    with contextlib.ExitStack() as stack:
        # Cheap checks first, so bad input fails in well under a second, before a model loads.
        probe_sources(specs, cfg)
        redis_url = _redis(cfg, stack)
        client = connect(redis_url, cfg.redis.socket_timeout_s, cfg.redis.cluster)
        stack.callback(client.close)
        # One job per prefix, taken before anything is renamed, claimed or started.
        stack.enter_context(JobLease(client, cfg.redis.prefix))
        # `streams add` works from here on (it checks for the lease): commands count from now,
        # not from when Ray and the workers are up, seconds later.
        control_from = control_end(client, cfg.redis.prefix)
        # Workers connect lazily (they must load while Redis is away), so they are told.
        cfg = cfg.model_copy(update={"redis": cfg.redis.model_copy(update={"cluster": is_cluster(client)})})
        moved = migrate_legacy_keys(client, cfg.redis.prefix)
        if moved:
            log.info("renamed %d key(s) of the layout before hash tags (README, \"Redis Cluster\")", moved)
        log.info("running %d stream(s) -> %s (key prefix %s:detections:)", len(specs), redact_url(redis_url), cfg.redis.prefix)
        pool, registry, on_worker_metrics = _pool(cfg, redis_url, metrics, stack)
        driver_metrics = DriverMetrics(registry)
        server = serve(registry, cfg.metrics.port, cfg.metrics.host)
        if server is not None:
            stack.callback(server.close)
        return run_coordinated(cfg, pool, StatusBoard(client, cfg.redis.prefix, driver_metrics, control_from), driver_metrics,
                               on_worker_metrics, stop, server, environ, on_tick)


def _pool(cfg: AppConfig, redis_url: str, metrics: Metrics | None, stack: contextlib.ExitStack):
    """The worker pool, the registry to serve, and where workers' metrics texts go."""
    if cfg.ray.in_process:
        # One worker in this process: its own registry is what we serve (no `worker` label).
        metrics = metrics or Metrics()
        return LocalPool(cfg, redis_url, metrics), metrics.registry, lambda i, text: None
    from fpnstream.cluster import ray_pool  # Ray loads here, after the cheap checks

    if not ray_pool.is_initialized():
        stack.callback(ray_pool.shutdown)
    ray_pool.connect(cfg)
    registry = CollectorRegistry()
    merged = WorkerMetrics()
    registry.register(merged)
    return ray_pool.RayPool(cfg, redis_url), registry, lambda i, text: merged.update(str(i), text)


def run_coordinated(cfg: AppConfig, pool: WorkerPool, board: StatusBoard, driver_metrics: DriverMetrics,
                    on_worker_metrics, stop: threading.Event, server=None, environ=os.environ,
                    on_tick: Callable[[JobSnapshot], None] | None = None) -> RunReport:
    """Start the workers, give them the streams, tick until every stream ended (or `stop`),
    then drain: the same loop for a local pool and a Ray pool."""
    started = time.monotonic()
    coord = Coordinator(cfg, pool, board, driver_metrics, on_worker_metrics, environ)
    if server is not None:
        server.ready = coord.ready
    try:
        board.start_control()  # (a job's board knows where since it took the prefix)
        coord.start_workers()
        coord.add_streams(cfg.sources)
        outage = OutageDeadline(cfg.redis.outage_wait_s)
        while not stop.is_set():
            coord.tick()
            if on_tick is not None:
                on_tick(coord.snapshot(time.monotonic() - started))
            if not cfg.keep_alive and coord.all_ended():
                break
            if not cfg.keep_alive and outage.expired(not board.up and coord.only_publishing_left()):
                why = f"Redis unreachable for {cfg.redis.outage_wait_s:g} s (redis.outage_wait_s) at the end of the run"
                log.error("%s; frames decoded and not published are lost", why)
                coord.fail_open_streams(why)
                break
            stop.wait(0.5)
        if stop.is_set():
            log.info("stopping: draining workers (grace %.0f s)", cfg.stop_grace_s)
        # Also after a normal end: frames of streams that failed or were removed may still
        # be queued, and they were accepted, so they get published.
        coord.drain(cfg.stop_grace_s)
        return coord.report(time.monotonic() - started)
    finally:
        pool.close()
