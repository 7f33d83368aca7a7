"""The one place a pipeline is wired from a config (the in-process run and every worker)."""

from __future__ import annotations

from fpnstream.config.settings import AppConfig
from fpnstream.core.backoff import Backoff
from fpnstream.core.observer import Observers, PipelineObserver
from fpnstream.observe.metrics import Metrics, MetricsObserver
from fpnstream.publish.sink import RedisStreamSink
from fpnstream.publish.spool import PublishBuffer
from fpnstream.publish.spool_folder import own_folder, sweep
from fpnstream.runtime.pipeline import Pipeline


def build_pipeline(cfg: AppConfig, backend, sink: RedisStreamSink, metrics: Metrics,
                   snapshots: PipelineObserver, keep_open: bool) -> Pipeline:
    """`keep_open`: a worker whose streams come and go; else it ends with its sources."""
    r = cfg.redis
    spool = None
    if r.spool_dir:
        sweep(r.spool_dir)  # folders of processes that died mid-outage
        spool = own_folder(r.spool_dir)
    buffer = PublishBuffer(spool, r.buffer_frames, int(r.spool_max_mb * 2**20))
    freshness = cfg.batch.freshness_ms / 1000.0 if cfg.batch.freshness_ms else None
    from fpnstream.analytics.stage import AnalyticsStage

    return Pipeline(
        backend, sink, Observers(MetricsObserver(metrics), snapshots), cfg.batch, cfg.decode.queue_size,
        buffer=buffer, freshness_s=freshness, keep_open=keep_open, stop_grace_s=cfg.stop_grace_s,
        backoff=lambda: Backoff(cfg.decode.reconnect_base_s, cfg.decode.reconnect_max_s), outage_wait_s=r.outage_wait_s,
        analytics=AnalyticsStage(cfg.tracking),
    )
