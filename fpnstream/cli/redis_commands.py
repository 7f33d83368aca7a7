"""Commands that read or steer a job through its Redis: `tail` and `streams`."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading

from fpnstream.core.errors import ConfigError, SinkError
from fpnstream.core.redact import redact_text
from fpnstream.publish.keys import job_key


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
    from fpnstream.config.settings import load_config
    from fpnstream.publish.connection import EmbeddedRedis, connect

    cfg = load_config(a.config, {"redis.url": a.redis_url, "redis.prefix": a.redis_prefix, "sources": []})
    if cfg.redis.url:
        return connect(cfg.redis.url, cfg.redis.socket_timeout_s, cfg.redis.cluster), cfg, None
    embedded = EmbeddedRedis(cfg.redis.embedded_dir)
    if not embedded.data_dir.is_dir():
        raise SinkError(f"no embedded Redis data in {embedded.data_dir}: run `fpnstream run` first, or pass --redis-url")
    embedded.start()
    return connect(embedded.url, cfg.redis.socket_timeout_s), cfg, embedded


def stream_analytics(zones: list[str] | None, lines: list[str] | None, track: bool) -> dict:
    """--zone/--line/--track of `streams add`, checked here so a typo fails before it is sent."""
    from pydantic import ValidationError

    from fpnstream.config.analytics import parse_line, parse_zone
    from fpnstream.config.settings import SourceConfig

    try:
        out = {"zones": [parse_zone(z) for z in zones or ()], "lines": [parse_line(ln) for ln in lines or ()]}
        if track:
            out["tracking"] = {"enabled": True}
        SourceConfig(uri="check", **out)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"streams add: {where}: {err['msg']}") from None
    except ValueError as e:
        raise ConfigError(f"streams add: {e}") from None
    return {k: v for k, v in out.items() if v}


def cmd_streams(a: argparse.Namespace) -> int:
    from fpnstream.publish.control import read_status, send_add, send_remove
    from fpnstream.publish.job_lease import describe_holder
    from fpnstream.sources.spec import parse_source_arg, resolve_sources

    with _redis_session(a) as (client, cfg):
        prefix = cfg.redis.prefix
        if a.streams_command == "add":
            src = parse_source_arg(a.source)
            resolve_sources([src])  # an unsupported scheme fails here, not in the job's log
            if a.fps is not None and not 0 < a.fps <= 1000:  # as sources[].fps; NaN fails too
                raise ConfigError("--fps must be within 0..1000 (> 0)")
            analytics = stream_analytics(a.zone, a.line, a.track)
            _a_job_reads(client, prefix)
            send_add(client, prefix, src.id, src.uri, a.fps, analytics, live=a.live)
            print(f"fpnstream: asked the job to add {redact_text(src.uri)}", file=sys.stderr)
        elif a.streams_command == "remove":
            _a_job_reads(client, prefix)
            send_remove(client, prefix, a.id)
            print(f"fpnstream: asked the job to remove {a.id}", file=sys.stderr)
        else:
            rows = read_status(client, prefix)
            holder = client.get(job_key(prefix))
            print(f"fpnstream: {'job on' if holder else 'no job running on'} prefix {prefix!r}"
                  + (f": {describe_holder(holder)}" if holder else ""), file=sys.stderr)
            if a.json:
                for row in rows:
                    print(json.dumps(row))
            else:
                cols = ("id", "state", "run", "worker", "fps", "published", "decoded", "dropped", "moves", "last_move", "error")
                print("\t".join(cols))
                for row in rows:
                    print("\t".join(str(row.get(c, "")) for c in cols))
        return 0


def _a_job_reads(client, prefix: str) -> None:
    """A command only counts for a job running on the prefix (it reads those sent after it
    took the prefix); sent with none, it would be ignored without a word."""
    if not client.exists(job_key(prefix)):
        raise ConfigError(f"no fpnstream job is running on Redis prefix {prefix!r}, so nothing would read the "
                          f"command; start one (--keep-alive keeps it running without streams), then send it")


def cmd_tail(a: argparse.Namespace) -> int:
    from fpnstream.publish.connection import read_streams
    from fpnstream.publish.keys import stream_key, stream_keys_glob
    from fpnstream.publish.schema import SchemaError, decode_entry

    if not 0 <= a.count <= 1_000_000:
        raise ConfigError("--count must be within 0..1000000")
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
            keys = sorted(k.decode() for k in client.scan_iter(match=stream_keys_glob(stream_key, prefix), _type="stream"))
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
                        for k in client.scan_iter(match=stream_keys_glob(stream_key, prefix), _type="stream"):
                            last.setdefault(k.decode(), "0-0")
                    if not last:
                        threading.Event().wait(1.0)
                        continue
                    for key, entries in read_streams(client, last, 100, block_ms=1000):
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
    from fpnstream.clients.consumer import DetectionConsumer
    from fpnstream.publish.keys import stream_key

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
                       "detections": r.detections.to_json_list(), "latency_ms": r.latency_ms, "gap": r.meta.gap,
                       "run": r.run}
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
