"""Command line: `fpnstream run | tail | synth`. Errors are one line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from typing import Any, Sequence

from fpnstream.config import MODEL_NAMES
from fpnstream.errors import ConfigError, FpnstreamError, SinkError
from fpnstream.redact import redact_text

log = logging.getLogger("fpnstream")


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("fpnstream")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


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
    run.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    tail = sub.add_parser("tail", help="print published entries as JSON lines")
    tail.add_argument("--config", help="YAML config (for redis settings)")
    tail.add_argument("--redis-url", help="default: the embedded Redis of `run`")
    tail.add_argument("--redis-prefix")
    tail.add_argument("--stream", help="one stream id (default: all)")
    tail.add_argument("--count", type=int, default=10, help="last N entries per stream (default 10)")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new entries")
    tail.add_argument("--group", help="read as a member of this consumer group (entries are acked once printed)")
    tail.add_argument("--consumer", help="consumer name within --group (default: HOST-PID)")
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
    bench.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32",
                       help="pipeline precision on CUDA (checked against fp32: >= 95 %% of boxes kept)")
    bench.add_argument("--channels-last", action="store_true", help="pipeline backbone in NHWC on CUDA")
    bench.add_argument("--load", type=float, default=0.5,
                       help="also measure latency with the clips paced at this share of the in-process throughput (0: skip)")
    bench.add_argument("--load-seconds", type=float, default=20.0, help="length of the paced run")
    bench.add_argument("--out", default="benchmarks/out", help="folder for bench.json, bench.md, bench.png")

    ann = sub.add_parser("annotate", help="draw a stream's published detections onto its source video")
    ann.add_argument("--source", required=True, help="the video file the stream was made from")
    ann.add_argument("--stream", required=True, help="stream id whose detections to draw")
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
    }


def _install_stop_handlers(stop: threading.Event) -> None:
    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():  # second signal: the user means it
            sys.stderr.write("fpnstream: forced exit; frames still in flight are lost\n")
            os._exit(130)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def cmd_run(a: argparse.Namespace) -> int:
    from fpnstream.config import load_config

    cfg = load_config(a.config, run_overrides(a))
    from fpnstream.app import run_job

    setup_logging(cfg.log_level)
    stop = threading.Event()
    _install_stop_handlers(stop)
    report = run_job(cfg, stop)
    for s in report.streams.values():
        dropped = ", ".join(f"{k}={v}" for k, v in sorted(s.dropped.items())) or "none"
        log.info("stream %s: decoded %d, published %d, dropped %s%s%s", s.stream_id, s.decoded, s.published, dropped,
                 f", reconnects {s.reconnects}" if s.reconnects else "", f", last error: {s.error}" if s.error else "")
    failed = [s for s in report.streams.values() if s.state == "failed"]
    rate = report.published / report.seconds if report.seconds > 0 else 0.0
    log.info(
        "done: %d frames published from %d stream(s) in %.1f s (%.1f frames/s)%s",
        report.published, len(report.streams), report.seconds, rate,
        f"; {len(failed)} stream(s) failed" if failed else "",
    )
    return 1 if failed else 0


@contextlib.contextmanager
def _redis_session(a: argparse.Namespace):
    """(client, cfg) for the commands that read a job's Redis; an embedded server started
    for them is stopped again."""
    client, cfg, embedded = _tail_client(a)
    try:
        yield client, cfg
    finally:
        client.close()
        if embedded:
            embedded.stop()


def _tail_client(a: argparse.Namespace):
    from fpnstream.config import load_config
    from fpnstream.redis_server import EmbeddedRedis, connect

    cfg = load_config(a.config, {"redis.url": a.redis_url, "redis.prefix": a.redis_prefix, "sources": []})
    if cfg.redis.url:
        return connect(cfg.redis.url, cfg.redis.socket_timeout_s), cfg, None
    embedded = EmbeddedRedis(cfg.redis.embedded_dir)
    if not embedded.data_dir.is_dir():
        raise SinkError(f"no embedded Redis data in {embedded.data_dir}: run `fpnstream run` first, or pass --redis-url")
    embedded.start()
    return connect(embedded.url, cfg.redis.socket_timeout_s), cfg, embedded


def cmd_streams(a: argparse.Namespace) -> int:
    from fpnstream.control import read_status, send_add, send_remove
    from fpnstream.sources.spec import parse_source_arg

    with _redis_session(a) as (client, cfg):
        prefix = cfg.redis.prefix
        if a.streams_command == "add":
            src = parse_source_arg(a.source)
            if a.fps is not None and a.fps <= 0:
                raise ConfigError("--fps must be > 0")
            send_add(client, prefix, src.id, src.uri, a.fps)
            print(f"fpnstream: asked the job to add {redact_text(src.uri)}", file=sys.stderr)
        elif a.streams_command == "remove":
            send_remove(client, prefix, a.id)
            print(f"fpnstream: asked the job to remove {a.id}", file=sys.stderr)
        else:
            rows = read_status(client, prefix)
            if a.json:
                for row in rows:
                    print(json.dumps(row))
            else:
                cols = ("id", "state", "worker", "fps", "published", "decoded", "dropped", "moves", "error")
                print("\t".join(cols))
                for row in rows:
                    print("\t".join(str(row.get(c, "")) for c in cols))
        return 0


def cmd_tail(a: argparse.Namespace) -> int:
    from fpnstream.schema import SchemaError, decode_entry, stream_key

    if a.count < 0:
        raise ConfigError("--count must be >= 0")
    if (a.consumer or a.start) and not a.group:
        raise ConfigError("--consumer and --start need --group")
    with _redis_session(a) as (client, cfg):
        prefix = cfg.redis.prefix
        if a.group:
            return _tail_group(a, client, prefix)
        if a.stream:
            keys = [stream_key(prefix, a.stream)]
            if not client.exists(keys[0]):
                if not a.follow:
                    raise SinkError(f"no stream {a.stream!r} under prefix {prefix!r}")
        else:
            keys = sorted(k.decode() for k in client.scan_iter(match=stream_key(prefix, "*"), _type="stream"))
            if not keys and not a.follow:
                print(f"fpnstream: no streams under prefix {prefix!r}", file=sys.stderr)
                return 0

        def emit(entry_id: bytes, fields: dict) -> None:
            try:
                doc = decode_entry(fields)
            except (SchemaError, ValueError) as e:
                doc = {"error": f"undecodable entry: {e}"}
            print(json.dumps({"id": entry_id.decode(), **doc}), flush=True)

        last: dict[str, bytes | str] = {}
        for key in keys:
            entries = client.xrevrange(key, count=a.count) if a.count else []
            for entry_id, fields in reversed(entries):
                emit(entry_id, fields)
            last[key] = entries[0][0] if entries else "$" if a.count == 0 else "0-0"
        if a.follow:
            if not keys:
                keys = [stream_key(prefix, a.stream)] if a.stream else []
                last = {k: "0-0" for k in keys}
            try:
                while True:
                    if not a.stream:  # pick up streams that appear while following
                        for k in client.scan_iter(match=stream_key(prefix, "*"), _type="stream"):
                            last.setdefault(k.decode(), "0-0")
                    if not last:
                        threading.Event().wait(1.0)
                        continue
                    for key, entries in client.xread(last, block=1000) or []:
                        for entry_id, fields in entries:
                            emit(entry_id, fields)
                            last[key.decode()] = entry_id
            except KeyboardInterrupt:
                return 0
        return 0


def _tail_group(a: argparse.Namespace, client, prefix: str) -> int:
    """Print and ack entries as a member of a consumer group: each entry goes to one member;
    ones a crashed member left unacked are taken over after 30 s. Without --follow, stop
    after --count entries or when none arrive for a second."""
    from fpnstream.consumer import DetectionConsumer
    from fpnstream.schema import stream_key

    if a.stream and not a.follow and not client.exists(stream_key(prefix, a.stream)):
        raise SinkError(f"no stream {a.stream!r} under prefix {prefix!r}")
    consumer = DetectionConsumer(client, prefix, [a.stream] if a.stream else None, group=a.group,
                                 consumer=a.consumer, start=a.start or "latest", count=min(a.count or 100, 100))
    printed = 0
    try:
        while a.follow or not a.count or printed < a.count:
            want = 100 if a.follow or not a.count else a.count - printed
            results = consumer.read(count=want)
            if not results and not a.follow:
                break
            for r in results:
                doc = {"id": r.entry_id, "v": "1", "stream": r.stream_id, "frame": r.meta.index, "pts": r.meta.pts,
                       "ts": r.meta.capture_ts, "width": r.meta.width, "height": r.meta.height, "model": r.model,
                       "detections": r.detections.to_json_list(), "latency_ms": r.latency_ms, "gap": r.meta.gap}
                if r.reclaimed:
                    doc["reclaimed"] = True
                print(json.dumps(doc), flush=True)
                consumer.ack(r)
                printed += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()  # entries fetched past --count go back to the group at once
    return 0


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size must look like 640x360, not {text!r}") from None
    return w, h


def cmd_bench(a: argparse.Namespace) -> int:
    from pathlib import Path

    from fpnstream.bench import bench

    w, h = _parse_size(a.size)
    if min(a.clips, a.frames, a.batch_size, w, h) < 1:
        raise ConfigError("bench: clips, frames, batch size and size must be positive")
    if not 0 <= a.load <= 1 or a.load_seconds <= 0:
        raise ConfigError("bench: --load must be within 0..1 and --load-seconds > 0")
    setup_logging("WARNING")
    doc = bench(a.clips, a.frames, w, h, a.model, a.batch_size, a.redis_url, not a.no_ray, Path(a.out), a.device,
                a.precision, a.channels_last, a.load, a.load_seconds)
    from fpnstream.bench import markdown

    print(markdown(doc))
    return 0


def cmd_annotate(a: argparse.Namespace) -> int:
    from pathlib import Path

    from fpnstream.annotate import annotate

    if a.sheet_frames < 0:
        raise ConfigError("--sheet-frames must be >= 0")
    with _redis_session(a) as (client, cfg):
        report = annotate(client, cfg.redis.prefix, a.stream, Path(a.source), Path(a.out),
                          Path(a.sheet) if a.sheet else None, a.sheet_frames)
    print(f"wrote {report.out} ({report.frames} frames, {report.annotated} matched to published entries"
          f"{f', sheet {report.sheet}' if report.sheet else ''})", file=sys.stderr)
    return 0


def cmd_preview(a: argparse.Namespace) -> int:
    from fpnstream.preview import run_preview

    if not 0 <= a.port <= 65535:
        raise ConfigError("--port must be 0..65535")
    setup_logging("INFO")
    stop = threading.Event()
    _install_stop_handlers(stop)
    with _redis_session(a) as (client, cfg):
        run_preview(client, cfg.redis.prefix, a.host, a.port, stop)
    return 0


def cmd_synth(a: argparse.Namespace) -> int:
    from fpnstream.synthetic import write_clip

    w, h = _parse_size(a.size)
    if not (16 <= w <= 8192 and 16 <= h <= 8192) or a.frames < 1 or a.fps < 1:
        raise ConfigError("synth: size must be 16..8192 per side, frames and fps >= 1")
    try:
        path = write_clip(a.out, frames=a.frames, width=w, height=h, fps=a.fps, codec=a.codec)
    except Exception as e:  # PyAV: unknown codec, unwritable folder
        raise FpnstreamError(f"cannot write {a.out}: {e}") from None
    print(f"wrote {path} ({a.frames} frames, {w}x{h} @ {a.fps} fps, {a.codec})", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    a = parser.parse_args(argv)
    handlers = {"run": cmd_run, "tail": cmd_tail, "streams": cmd_streams, "synth": cmd_synth, "bench": cmd_bench,
                "annotate": cmd_annotate, "preview": cmd_preview}
    try:
        rc = handlers[a.command](a)
        if a.command == "run" and threading.active_count() > 1:
            # Everything is published and every server we started is stopped. A decoder thread
            # may still sit in a blocking FFmpeg read (a silent camera); letting the interpreter
            # tear down under it can crash, so leave now.
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
        return rc
    except FpnstreamError as e:
        print(f"fpnstream: error: {redact_text(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("fpnstream: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if a.debug:
            raise
        print(
            f"fpnstream: internal error: {type(e).__name__}: {redact_text(str(e)).splitlines()[0] if str(e) else ''} "
            "(rerun with --debug for a traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
