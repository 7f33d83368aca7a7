"""`fpnstream run`: build the stages from a config, run the pipeline, clean up."""

from __future__ import annotations

import contextlib
import logging
import threading

import fpnstream
from fpnstream.config import AppConfig
from fpnstream.errors import ConfigError
from fpnstream.metrics import Metrics
from fpnstream.pipeline import Pipeline, RunReport
from fpnstream.redis_server import EmbeddedRedis, connect
from fpnstream.redact import redact_url
from fpnstream.sink import RedisStreamSink
from fpnstream.sources import VideoDecoder, resolve_sources

log = logging.getLogger(__name__)


def _backend(cfg: AppConfig, stack: contextlib.ExitStack):
    # torch (and Ray) load here, after the cheap checks: bad input fails in well under a second.
    from fpnstream.backends import InProcessBackend

    if cfg.ray.in_process:
        backend = InProcessBackend.from_config(cfg.model, cfg.ray)
    else:
        import ray  # imported here so the in-process path works where Ray is not installed

        from fpnstream.ray_backend import RayBackend

        started_ray = not ray.is_initialized()
        if started_ray:
            stack.callback(ray.shutdown)
        backend = RayBackend.from_config(cfg.model, cfg.ray)
    stack.callback(backend.close)
    return backend


def run_job(cfg: AppConfig, stop: threading.Event, metrics: Metrics | None = None) -> RunReport:
    specs = resolve_sources(cfg.sources)
    if not specs:
        raise ConfigError("no sources: pass --source [ID=]URI or list sources: in the config")
    with contextlib.ExitStack() as stack:
        # Cheap checks first, so bad input fails in milliseconds, before a model is loaded.
        decoders = [VideoDecoder(spec, cfg.decode) for spec in specs]
        for d in decoders:
            stack.callback(d.close)
            d.open()
        if cfg.redis.url:
            redis_url = cfg.redis.url
        else:
            embedded = stack.enter_context(EmbeddedRedis(cfg.redis.embedded_dir))
            redis_url = embedded.url
            log.info("embedded Redis at %s (data in %s)", redis_url, embedded.data_dir)
        client = connect(redis_url, cfg.redis.socket_timeout_s)
        stack.callback(client.close)
        metrics = metrics or Metrics()
        metrics.serve(cfg.metrics.port, cfg.metrics.host)
        backend = _backend(cfg, stack)
        metrics.build_info.info({"version": fpnstream.__version__, "model": backend.model_name, "device": backend.device})
        sink = RedisStreamSink(client, cfg.redis.prefix, cfg.redis.maxlen, backend.model_name)
        log.info(
            "running %d stream(s) -> %s (key prefix %s:detections:)",
            len(specs), redact_url(redis_url), cfg.redis.prefix,
        )
        pipeline = Pipeline(decoders, backend, sink, metrics, cfg.batch, cfg.decode.queue_size,
                            stop_grace_s=cfg.decode.read_timeout_s + 1.0)
        return pipeline.run(stop)
