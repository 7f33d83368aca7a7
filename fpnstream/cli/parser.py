"""The command line's shape: every subcommand and flag, and the one mapping from `run`'s
flags to config keys (each flag sets one dotted key; None means not given)."""

from __future__ import annotations

import argparse
from typing import Any

import re

from fpnstream.config.settings import MODEL_NAMES
from fpnstream.core.errors import ConfigError
from fpnstream.core.ids import STREAM_ID


def _stream_id(text: str) -> str:
    """A stream id as every part checks it (bytes that are not UTF-8 were an internal error)."""
    if not re.fullmatch(STREAM_ID, text):
        raise argparse.ArgumentTypeError("not a stream id (letters, digits, '_', '.', '-'; up to 128)")
    return text


def _name(text: str) -> str:
    """A consumer group or consumer name: printable UTF-8, as Redis keeps it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("not UTF-8 text") from None
    if not text or not text.isprintable():
        raise argparse.ArgumentTypeError("must be printable text")
    return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fpnstream", description="Streaming FPN Faster R-CNN detection to Redis Streams")
    p.add_argument("--debug", action="store_true", help="show tracebacks for internal errors")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="decode sources, detect on Ray actors, publish to Redis Streams")
    run.add_argument("--config", help="YAML config (see configs/default.yaml)")
    run.add_argument("--source", action="append", metavar="[ID=]URI", help="file path, file://, rtsp://...; repeatable")
    run.add_argument("--fps", type=float, help="sample every --source down to this frame rate")
    run.add_argument("--redis-url", help="redis://[:password@]host:port/db or rediss://; default: embedded Redis")
    run.add_argument("--redis-prefix", help="key prefix (keys are PREFIX:detections:STREAM)")
    run.add_argument("--redis-maxlen", type=int, help="approximate max entries kept per stream (0: unbounded)")
    run.add_argument("--model", help="one of: " + ", ".join(MODEL_NAMES))
    run.add_argument("--weights", help="DEFAULT (or a torchvision enum member, e.g. COCO_V1) | none | PATH to a state_dict")
    run.add_argument("--labels", help="class names file, one per line")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"])
    run.add_argument("--score-threshold", type=float)
    run.add_argument("--max-detections", type=int)
    run.add_argument("--classes", help="comma-separated allow-list, e.g. person,car")
    run.add_argument("--min-size", type=int, help="resize: shorter side (model default if unset)")
    run.add_argument("--max-size", type=int, help="resize: longer side cap")
    run.add_argument("--precision", choices=["fp32", "fp16", "bf16", "int8"],
                     help="fp32 (default, exact); fp16/bf16 on CUDA; bf16 or int8 box head on CPU (see `fpnstream bench`)")
    run.add_argument("--compile", action="store_true", default=None,
                     help="torch.compile the dense layers (backbone, RPN head; on CUDA also the box head, with "
                          "CUDA graphs); warm up sizes with model.warmup_sizes")
    run.add_argument("--track", action="store_true", default=None,
                     help="track objects in every stream (track_id in detections; see `tracking:` in the config)")
    run.add_argument("--batch-size", type=int)
    run.add_argument("--batch-wait-ms", type=float)
    run.add_argument("--metrics-port", type=int, help="Prometheus port (0 disables)")
    run.add_argument("--metrics-host", help="bind address of the metrics endpoint")
    run.add_argument("--ray-address", help="join this Ray cluster ('auto' or host:port); default: local Ray")
    run.add_argument("--num-actors", type=int, help="detector actors (default: one per GPU, else 1)")
    run.add_argument("--in-process", action="store_true", default=None, help="detect in this process, without Ray")
    run.add_argument("--freshness-ms", type=float, help="drop live frames older than this at inference (stale)")
    run.add_argument("--stop-grace", type=float, help="seconds to drain on SIGINT/SIGTERM before exiting")
    run.add_argument("--keep-alive", action="store_true", default=None,
                     help="keep running when all sources have ended (add streams with `fpnstream streams add`)")
    run.add_argument("--restart", action="store_true", default=None,
                     help="start every stream over as a new run (default: resume a stream whose last run was cut short)")
    run.add_argument("--status-interval", type=float, metavar="S",
                     help="progress: a live table on a terminal, else one log line per stream every S s (0: off)")
    run.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    tail = sub.add_parser("tail", help="print published entries as JSON lines")
    tail.add_argument("--config", help="YAML config (for redis settings)")
    tail.add_argument("--redis-url", help="default: the embedded Redis of `run`")
    tail.add_argument("--redis-prefix")
    tail.add_argument("--stream", type=_stream_id, help="one stream id (default: all)")
    tail.add_argument("--count", type=int, default=10, help="last N entries per stream (default 10)")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new entries")
    tail.add_argument("--group", type=_name, help="read as a member of this consumer group (entries are acked once printed)")
    tail.add_argument("--consumer", type=_name, help="consumer name within --group (default: HOST-PID)")
    tail.add_argument("--start", default=None,
                      help="with --group, where a new group starts: latest (default), beginning, or a time "
                           "(ISO 8601 or Unix seconds)")

    streams = sub.add_parser("streams", help="add, remove or list streams of a running job (through Redis)")
    streams.add_argument("--config", help="YAML config (for redis settings)")
    streams.add_argument("--redis-url", help="default: the embedded Redis of `run`")
    streams.add_argument("--redis-prefix")
    ssub = streams.add_subparsers(dest="streams_command", required=True)
    s_add = ssub.add_parser("add", help="add a stream: [ID=]URI; write passwords as ${VAR} (expanded by the job)")
    s_add.add_argument("source", metavar="[ID=]URI")
    s_add.add_argument("--fps", type=float)
    s_add.add_argument("--live", action=argparse.BooleanOptionalAction, default=None,
                       help="as sources[].live: --no-live reads a video file served over http(s) once (default: by the URI)")
    s_add.add_argument("--track", action="store_true", help="track objects in this stream (track_id in detections)")
    s_add.add_argument("--zone", action="append", metavar="NAME:x,y;x,y;x,y",
                       help="a polygon zone in frame pixels (enter/exit events, occupancy); repeatable")
    s_add.add_argument("--line", action="append", metavar="NAME:x1,y1;x2,y2",
                       help="a counting line; crossing left-to-right of start->end is `in`; repeatable")
    s_rm = ssub.add_parser("remove", help="stop a stream")
    s_rm.add_argument("id")
    s_ls = ssub.add_parser("list", help="state, fps, drops and last error per stream")
    s_ls.add_argument("--json", action="store_true", help="one JSON object per line")

    bench = sub.add_parser("bench", help="naive PyAV+torchvision loop vs. the pipeline (in-process and Ray), one run")
    bench.add_argument("--clips", type=int, default=4)
    bench.add_argument("--frames", type=int, default=30, help="frames per clip")
    bench.add_argument("--size", default="640x360", help="WxH of the synthetic clips")
    bench.add_argument("--model", default="fasterrcnn_mobilenet_v3_large_320_fpn", choices=MODEL_NAMES)
    bench.add_argument("--batch-size", type=int, default=4)
    bench.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    bench.add_argument("--redis-url", help="default: an embedded Redis")
    bench.add_argument("--no-ray", action="store_true", help="skip the Ray run")
    bench.add_argument("--precision", choices=["fp32", "fp16", "bf16", "int8"], default="fp32",
                       help="fast-mode precision: fp16/bf16 on CUDA, bf16 or int8 box head on CPU (checked against fp32: "
                            ">= 95 %% of boxes kept)")
    bench.add_argument("--channels-last", action="store_true", help="fast mode: backbone in NHWC")
    bench.add_argument("--compile", action="store_true", help="fast mode: torch.compile, warmed up for --size")
    bench.add_argument("--openvino", action="store_true", help="fast mode: the backbone+FPN on OpenVINO (CPU)")
    bench.add_argument("--gather-roi-align", action="store_true",
                       help="fast mode: RoIAlign as one weighted gather-sum (model.roi_align: gather, CPU)")
    bench.add_argument("--feed", action="store_true",
                       help="measure the host side instead: the pipeline with a zero-cost stand-in detector vs. "
                            "PyAV decoding alone (no model)")
    bench.add_argument("--rounds", type=int, default=3, help="--feed: interleaved rounds (medians reported)")
    bench.add_argument("--load", type=float, default=0.5,
                       help="also measure latency with the clips paced at this share of the in-process throughput (0: skip)")
    bench.add_argument("--load-seconds", type=float, default=20.0, help="length of the paced run")
    bench.add_argument("--out", default="benchmarks/out", help="folder for bench.json, bench.md, bench.png")

    ann = sub.add_parser("annotate", help="draw a stream's published detections onto its source video")
    ann.add_argument("--source", required=True, help="the video file the stream was made from")
    ann.add_argument("--stream", type=_stream_id, required=True, help="stream id whose detections to draw")
    ann.add_argument("--out", required=True, help="OUT.mp4 (H.264) or a folder for PNG frames")
    ann.add_argument("--config", help="YAML config (for redis settings)")
    ann.add_argument("--redis-url", help="default: the embedded Redis of `run`")
    ann.add_argument("--redis-prefix")
    ann.add_argument("--sheet", help="contact sheet PNG (default: next to --out, *-sheet.png)")
    ann.add_argument("--sheet-frames", type=int, default=6, help="frames on the contact sheet")

    prev = sub.add_parser("preview", help="web page with each stream's latest annotated frame, fps, latency, drops")
    prev.add_argument("--config", help="YAML config (for redis settings)")
    prev.add_argument("--redis-url", help="default: the embedded Redis of `run`")
    prev.add_argument("--redis-prefix")
    prev.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    prev.add_argument("--port", type=int, default=8090, help="HTTP port (default 8090; 0 = any free port)")

    synth = sub.add_parser("synth", help="write a synthetic test video (moving shapes)")
    synth.add_argument("out")
    synth.add_argument("--frames", type=int, default=150)
    synth.add_argument("--size", default="640x360", help="WxH")
    synth.add_argument("--fps", type=int, default=30)
    synth.add_argument("--codec", default="libx264")
    return p


def run_overrides(a: argparse.Namespace) -> dict[str, Any]:
    sources = None
    if a.fps is not None and not a.source:
        raise ConfigError("--fps applies to --source; set fps per source in the config file instead")
    if a.source:
        from fpnstream.sources.spec import parse_source_arg

        sources = [{**parse_source_arg(s).model_dump(exclude_none=True), **({"fps": a.fps} if a.fps is not None else {})} for s in a.source]
    return {
        "sources": sources,
        "redis.url": a.redis_url,
        "redis.prefix": a.redis_prefix,
        "redis.maxlen": a.redis_maxlen,
        "model.name": a.model,
        "model.weights": a.weights,
        "model.labels": a.labels,
        "model.device": a.device,
        "model.score_threshold": a.score_threshold,
        "model.max_detections": a.max_detections,
        "model.classes": a.classes,
        "model.min_size": a.min_size,
        "model.max_size": a.max_size,
        "model.precision": a.precision,
        "model.compile": a.compile,
        "tracking.enabled": a.track,
        "batch.max_size": a.batch_size,
        "batch.max_wait_ms": a.batch_wait_ms,
        "metrics.port": a.metrics_port,
        "metrics.host": a.metrics_host,
        "ray.address": a.ray_address,
        "ray.num_actors": a.num_actors,
        "ray.in_process": a.in_process,
        "log_level": a.log_level,
        "batch.freshness_ms": a.freshness_ms,
        "stop_grace_s": a.stop_grace,
        "keep_alive": a.keep_alive,
        "restart": a.restart,
        "status_interval_s": a.status_interval,
    }
