"""`fpnstream run`: build the stages from a config, run them, clean up."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import replace
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry

import fpnstream
from fpnstream.config import AppConfig
from fpnstream.control import expand_env
from fpnstream.errors import ConfigError
from fpnstream.metrics import Metrics, serve
from fpnstream.pipeline import Pipeline, RunReport
from fpnstream.redis_server import EmbeddedRedis, connect
from fpnstream.redact import redact_url
from fpnstream.sink import RedisStreamSink
from fpnstream.sources import SourceSpec, VideoDecoder, resolve_sources
from fpnstream.sources.reconnect import Backoff

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


def backoff_policy(cfg: AppConfig):
    return lambda: Backoff(cfg.decode.reconnect_base_s, cfg.decode.reconnect_max_s)


def buffer_options(cfg: AppConfig) -> dict:
    r = cfg.redis
    return {"buffer_frames": r.buffer_frames, "spool_dir": r.spool_dir, "spool_bytes": int(r.spool_max_mb * 2**20),
            "outage_wait_s": r.outage_wait_s}


def _redis(cfg: AppConfig, stack: contextlib.ExitStack) -> str:
    if cfg.redis.url:
        return cfg.redis.url
    if cfg.ray.address and not cfg.ray.in_process:
        raise ConfigError("joining a Ray cluster needs --redis-url: workers on other nodes cannot reach an embedded Redis")
    embedded = stack.enter_context(EmbeddedRedis(cfg.redis.embedded_dir))
    log.info("embedded Redis at %s (data in %s)", embedded.url, embedded.data_dir)
    return embedded.url


def run_job(cfg: AppConfig, stop: threading.Event, environ=os.environ, metrics: Metrics | None = None) -> RunReport:
    """`metrics`: record the in-process run here (benchmarks read the stage times back)."""
    specs = [replace(s, uri=expand_env(s.uri, environ)) for s in resolve_sources(cfg.sources)]
    if not specs and not cfg.keep_alive:
        raise ConfigError("no sources: pass --source [ID=]URI, list sources: in the config, or use --keep-alive")
    with contextlib.ExitStack() as stack:
        # Cheap checks first, so bad input fails in well under a second, before a model loads.
        probe_sources(specs, cfg)
        redis_url = _redis(cfg, stack)
        client = connect(redis_url, cfg.redis.socket_timeout_s)
        stack.callback(client.close)
        log.info("running %d stream(s) -> %s (key prefix %s:detections:)", len(specs), redact_url(redis_url), cfg.redis.prefix)
        if cfg.ray.in_process:
            return _run_in_process(cfg, specs, client, stop, metrics or Metrics())
        return _run_on_ray(cfg, client, redis_url, stop, stack)


def _run_in_process(cfg: AppConfig, specs: list[SourceSpec], client, stop: threading.Event, metrics: Metrics) -> RunReport:
    from fpnstream.backends import InProcessBackend  # torch loads here, after the cheap checks
    from fpnstream.snapshots import PreviewSnapshots

    server = serve(metrics.registry, cfg.metrics.port, cfg.metrics.host)
    backend = InProcessBackend.from_config(cfg.model, cfg.ray, metrics.gpu_memory)
    if server:
        server.ready = lambda: bool(client.ping())
    try:
        metrics.build_info.info({"version": fpnstream.__version__, "model": backend.model_name, "device": backend.device})
        sink = RedisStreamSink(client, cfg.redis.prefix, cfg.redis.maxlen, backend.model_name)
        freshness = cfg.batch.freshness_ms / 1000.0 if cfg.batch.freshness_ms else None
        pipeline = Pipeline(backend, sink, metrics, cfg.batch, cfg.decode.queue_size, freshness_s=freshness,
                            keep_open=cfg.keep_alive, stop_grace_s=cfg.stop_grace_s, backoff=backoff_policy(cfg),
                            snapshots=PreviewSnapshots.from_config(cfg.preview, client, cfg.redis.prefix, backend.model_name),
                            **buffer_options(cfg))
        for spec in specs:
            sink.claim(spec.stream_id, restart=True)
            pipeline.add_source(VideoDecoder(spec, cfg.decode))
        return pipeline.run(stop)
    finally:
        backend.close()


def _run_on_ray(cfg: AppConfig, client, redis_url: str, stop: threading.Event, stack: contextlib.ExitStack) -> RunReport:
    import ray

    from fpnstream.cluster import WorkerMetrics, connect as connect_ray, run_cluster

    registry = CollectorRegistry()
    worker_metrics = WorkerMetrics()
    registry.register(worker_metrics)
    server = serve(registry, cfg.metrics.port, cfg.metrics.host)
    if not ray.is_initialized():
        stack.callback(ray.shutdown)
    connect_ray(cfg)
    return run_cluster(cfg, list(cfg.sources), client, redis_url, worker_metrics, stop, server)
