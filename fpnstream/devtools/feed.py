"""`fpnstream bench --feed`: can the host side keep a fast accelerator fed?

Runs over the same clips, with the same decoding threads (one per stream), in `rounds`
rounds (medians reported, every round kept), so one noisy second does not make the figure:
1. decode alone: fpnstream's decoder (PyAV, its RGB conversion) on every clip as fast as
   it can, nothing else: the yardstick of the ratio, which so measures only what the
   pipeline adds;
2. the pipeline: decode, batching, a stand-in detector and Redis publishing, in-process;
3. for reference, plain PyAV as a user writes it (`frame.to_ndarray(format="rgb24")`).

The stand-in costs no host time: it sleeps `batch_ms` per batch with the GIL released,
as a CUDA kernel does, and returns a fixed set of boxes per frame, so entry encoding and
publishing do their real work. The ratio of (2) to (1) is the share of decode throughput
the rest of the pipeline keeps; its shortfall is per-frame Python work on the host.
"""

from __future__ import annotations

import json
import tempfile
from statistics import median
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fpnstream.core.frames import BatchResult, Detections, Frame, StageTimes


@dataclass(frozen=True)
class _StandInDevice:
    type: str = "stand-in"

    def __str__(self) -> str:
        return "stand-in"


class StandInDetector:
    """Detector-shaped, costing no host time: a GPU whose kernels take `batch_s` per batch."""

    lanes = 1
    model_name = "stand-in"
    device = _StandInDevice()

    def __init__(self, batch_s: float, boxes_per_frame: int = 5) -> None:
        self._batch_s = batch_s
        rng = np.random.default_rng(0)
        xy = rng.uniform(0, 200, (boxes_per_frame, 2)).astype(np.float32)
        self._dets = Detections(np.hstack([xy, xy + 40]), np.full(boxes_per_frame, 0.9, np.float32),
                                np.ones(boxes_per_frame, np.int64), ("person",) * boxes_per_frame)

    def detect(self, frames: list[Frame]) -> BatchResult:
        time.sleep(self._batch_s)  # releases the GIL, like waiting on a CUDA stream
        return BatchResult(tuple(f.meta() for f in frames), (self._dets,) * len(frames),
                           StageTimes(0.0, self._batch_s, 0.0))


def decode_alone(paths: list[Path]) -> float:
    """Frames/s of fpnstream's own decoder (PyAV, same codec threads, RGB arrays) reading
    every clip at once, one thread per clip, doing nothing else with the frames."""
    from fpnstream.config.settings import DecodeConfig
    from fpnstream.sources import VideoDecoder
    from fpnstream.sources.spec import SourceSpec

    def work(path: Path) -> int:
        decoder = VideoDecoder(SourceSpec(path.stem, str(path), live=False), DecodeConfig())
        decoder.open()
        try:
            return sum(1 for _ in decoder.frames())
        finally:
            decoder.close()

    return _threaded(paths, work)


def plain_pyav(paths: list[Path]) -> float:
    """Frames/s of PyAV as a user writes it (slice threads, `to_ndarray(format="rgb24")` per
    frame, which builds a converter per frame), one thread per clip."""
    import av

    def work(path: Path) -> int:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "SLICE"
            return sum(1 for f in container.decode(stream) if f.to_ndarray(format="rgb24") is not None)

    return _threaded(paths, work)


def _threaded(paths: list[Path], work) -> float:
    counts = [0] * len(paths)

    def run(i: int, path: Path) -> None:
        counts[i] = work(path)

    threads = [threading.Thread(target=run, args=(i, p)) for i, p in enumerate(paths)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def pipeline_fed(paths: list[Path], batch: int, batch_s: float, redis_url: str) -> tuple[float, int, dict]:
    """Frames/s through the in-process pipeline with the stand-in, frames published, and
    stage ms per frame."""
    from fpnstream.config.settings import build_config
    from fpnstream.detection.backends import InProcessBackend
    from fpnstream.observe.metrics import Metrics
    from fpnstream.publish.connection import connect
    from fpnstream.publish.sink import RedisStreamSink
    from fpnstream.publish.snapshots import NoSnapshots
    from fpnstream.runtime.build import build_pipeline
    from fpnstream.sources import VideoDecoder
    from fpnstream.sources.spec import resolve_sources

    cfg = build_config({"sources": [{"uri": str(p), "id": p.stem} for p in paths],
                        "batch": {"max_size": batch, "max_wait_ms": 5}, "ray": {"in_process": True},
                        "redis": {"url": redis_url, "prefix": "feed", "spool_dir": None}, "metrics": {"port": 0}})
    client = connect(redis_url)
    metrics = Metrics()
    sink = RedisStreamSink(client, "feed", cfg.redis.maxlen, "stand-in")
    backend = InProcessBackend(StandInDetector(batch_s), max_inflight=2)
    pipeline = build_pipeline(cfg, backend, sink, metrics, NoSnapshots(), keep_open=False)
    for spec in resolve_sources(cfg.sources):
        sink.claim(spec.stream_id, owner="feed", restart=True)
        pipeline.add_source(VideoDecoder(spec, cfg.decode))
    t0 = time.perf_counter()
    report = pipeline.run(threading.Event())
    secs = time.perf_counter() - t0
    backend.close()
    from fpnstream.devtools.bench import _stage_means

    return report.published / secs, report.published, _stage_means(metrics, report.published)


def feed_bench(clips: int, frames: int, width: int, height: int, batch: int, out_dir: Path,
               batch_ms: float = 2.0, rounds: int = 3, on_step=lambda done, total=None, step="": None) -> dict:
    from fpnstream.devtools.bench import make_inputs
    from fpnstream.publish.connection import EmbeddedRedis

    out_dir.mkdir(parents=True, exist_ok=True)
    alone, fed, plain = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_inputs(Path(tmp), clips, frames, width, height)
        decode_alone(paths)  # warm the page cache and PyAV's first-use set-up
        with EmbeddedRedis(Path(tmp) / "redis") as redis_server:
            pipeline_fed(paths, batch, batch_ms / 1000.0, redis_server.url)  # the pipeline's imports and first use
            for r in range(rounds):  # interleaved, so a slow spell of the machine hits every run alike
                on_step(r, rounds, f"round {r + 1} of {rounds}")
                alone.append(decode_alone(paths))
                fps, published, stages = pipeline_fed(paths, batch, batch_ms / 1000.0, redis_server.url)
                fed.append(fps)
                plain.append(plain_pyav(paths))
    a, f, p = median(alone), median(fed), median(plain)
    doc = {"input": {"clips": clips, "frames_per_clip": frames, "size": f"{width}x{height}", "batch": batch,
                     "stand_in_batch_ms": batch_ms, "rounds": rounds},
           "decode_alone_fps": round(a, 1), "pipeline_fps": round(f, 1), "ratio": round(f / a, 3),
           "plain_pyav_fps": round(p, 1), "ratio_to_plain_pyav": round(f / p, 3),
           "rounds": [{"decode_alone_fps": round(x, 1), "pipeline_fps": round(y, 1), "plain_pyav_fps": round(z, 1)}
                      for x, y, z in zip(alone, fed, plain)],
           "published": published,
           "pipeline_stage_ms_per_frame": stages}
    (out_dir / "feed.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def feed_markdown(doc: dict) -> str:
    i = doc["input"]
    return (f"{i['clips']} streams x {i['frames_per_clip']} frames, {i['size']}, batch {i['batch']}, stand-in detector "
            f"{i['stand_in_batch_ms']} ms/batch: decode alone {doc['decode_alone_fps']} frames/s, pipeline "
            f"{doc['pipeline_fps']} frames/s, ratio {doc['ratio']:.2f} (medians of {i['rounds']} rounds); plain PyAV "
            f"(a converter per frame) {doc['plain_pyav_fps']} frames/s, pipeline / plain PyAV "
            f"{doc['ratio_to_plain_pyav']:.2f}\n")
