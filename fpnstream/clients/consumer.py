"""Read fpnstream's detections from Redis: typed results, consumer groups, ack, reclaim.

    import redis
    from fpnstream.clients.consumer import DetectionConsumer

    consumer = DetectionConsumer(redis.Redis(), group="alerts", consumer="alerts-1")
    for result in consumer:                      # blocks; every stream under the prefix
        for box, name, score in zip(result.detections.boxes, result.detections.names,
                                    result.detections.scores):
            ...
        consumer.ack(result)                     # unacked entries are reclaimed by others

Without a group, a consumer reads every entry itself (like `tail -f`); with one, the group's
consumers share the entries, each entry goes to one of them, and entries a crashed consumer
left unacknowledged are taken over (XAUTOCLAIM) once idle for `claim_idle_ms`.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Iterator, Sequence

import numpy as np
import redis

from fpnstream.core.errors import ConfigError, SinkError
from fpnstream.core.frames import Detections, FrameMeta
from fpnstream.publish.connection import read_streams
from fpnstream.publish.schema import SchemaError, as_text, decode_entry
from fpnstream.publish.keys import stream_key, stream_keys_glob

log = logging.getLogger(__name__)

_MAX_SEQ = 2**64 - 1
_RELEASED_IDLE_MS = 10 * 24 * 3600 * 1000  # idle "for ten days": past any reclaim threshold


@dataclass(frozen=True, slots=True)
class FrameResult:
    """One published frame: its metadata and its detections as aligned arrays."""

    entry_id: str  # Redis stream entry id; its first part is the publish time in ms
    key: str  # the Redis stream key it came from
    meta: FrameMeta
    detections: Detections
    model: str
    latency_ms: float  # capture -> publish, as measured by the worker
    reclaimed: bool = False  # taken over from a consumer that did not ack it
    run: int = 1  # the stream's run: (stream, run, frame) is unique; a new run restarts frames at 0

    @property
    def stream_id(self) -> str:
        return self.meta.stream_id

    @property
    def published_ts(self) -> float:
        return int(self.entry_id.split("-", 1)[0]) / 1000.0


def result_from_entry(key: str, entry_id: str, fields: dict, reclaimed: bool = False) -> FrameResult:
    doc = decode_entry(fields)
    dets = doc["detections"]
    detections = Detections(
        boxes=np.asarray([d["box"] for d in dets], dtype=np.float32).reshape(-1, 4),
        scores=np.asarray([d["score"] for d in dets], dtype=np.float32),
        labels=np.asarray([d["label"] for d in dets], dtype=np.int64),
        names=tuple(d.get("name", "") for d in dets),
        # track_id: null (no confirmed track) -> -1; absent everywhere (entries written
        # before tracking existed, or an untracked stream) -> None
        track_ids=(np.asarray([-1 if d.get("track_id") is None else d["track_id"] for d in dets], dtype=np.int64)
                   if any("track_id" in d for d in dets) else None),
    )
    meta = FrameMeta(doc["stream"], doc["frame"], doc["pts"], doc["ts"], doc["width"], doc["height"], doc["gap"])
    return FrameResult(entry_id, key, meta, detections, doc["model"], doc["latency_ms"], reclaimed, doc["run"])


def parse_start(start: str | float | datetime | None) -> str | float:
    """'latest' | 'beginning' | a datetime | Unix seconds | an ISO 8601 string (naive = local time)."""
    if start is None or start == "latest":
        return "latest"
    if start == "beginning":
        return "beginning"
    bad = ConfigError(f"start must be latest, beginning, Unix seconds or an ISO 8601 time, not {start!r}")
    if isinstance(start, datetime):
        ts = start.timestamp()
    elif isinstance(start, (int, float)):
        ts = float(start)
    else:
        try:
            ts = float(start)
        except ValueError:
            try:
                ts = datetime.fromisoformat(start).timestamp()
            except ValueError:
                raise bad from None
    if not 0 <= ts < 1e11:  # also rejects nan and inf
        raise bad
    return ts


def _id_before(ts: float) -> str:
    """The largest entry id before `ts`: reading after it yields every entry at or after ts."""
    ms = int(ts * 1000)
    return f"{ms - 1}-{_MAX_SEQ}" if ms > 0 else "0-0"


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class DetectionConsumer:
    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "fpnstream",
        streams: Sequence[str] | None = None,
        group: str | None = None,
        consumer: str | None = None,
        start: str | float | datetime | None = "latest",
        count: int = 100,
        block_ms: int = 1000,
        claim_idle_ms: int | None = 30_000,
        discover_every_s: float = 2.0,
    ) -> None:
        """`streams`: stream ids (default: every stream under `prefix`, including ones that
        appear later). `start` applies to a consumer without a group, and to a group when this
        consumer creates it; an existing group keeps its position. `claim_idle_ms`: take over
        entries other group members left unacked this long (None: only on `reclaim()`)."""
        if count < 1 or block_ms < 0:
            raise ConfigError("count must be >= 1 and block_ms >= 0")
        if consumer is not None and group is None:
            raise ConfigError("a consumer name needs a group")
        self._client = client
        self._prefix = prefix
        self._fixed = [stream_key(prefix, s) for s in streams] if streams else None
        self.group = group
        self.consumer = consumer or (default_consumer_name() if group else None)
        self._count = count
        self._block_ms = block_ms
        self._claim_idle_ms = claim_idle_ms
        self._discover_every_s = discover_every_s
        self._next_discovery = 0.0
        self._last_claim = 0.0
        self._buffer: list[FrameResult] = []
        self.skipped = 0  # entries that could not be decoded (acked in a group, so they do not come back)
        start = parse_start(start)
        self._latest = start == "latest"
        # Resolved once, in the server's clock: streams found later start from the same point;
        # streams that exist now start after their last entry.
        if start == "latest":
            secs, micros = _redis_call(client.time)
            self._start_id = _id_before(secs + micros / 1e6)
        elif start == "beginning":
            self._start_id = "0-0"
        else:
            self._start_id = _id_before(float(start))
        # Per key: where this consumer reads next. In a group, "0" first (this consumer's own
        # unacked entries, e.g. from before a restart), then ">" (new entries).
        self._cursor: dict[str, str] = {}
        self._discover(force=True)

    # -- public ----------------------------------------------------------------------------
    def read(self, count: int | None = None, block_ms: int | None = None) -> list[FrameResult]:
        """Up to `count` results in all, waiting up to `block_ms` for the first one."""
        self._discover()
        count = count or self._count
        block = self._block_ms if block_ms is None else block_ms
        if len(self._buffer) < count:
            # Never block while results are already at hand.
            self._buffer += self._fetch(count - len(self._buffer), None if self._buffer else block)
        out, self._buffer = self._buffer[:count], self._buffer[count:]
        return out

    def _fetch(self, want: int, block: int | None) -> list[FrameResult]:
        """One round of reads over every stream. Redis applies COUNT per stream, so a round can
        bring more than `want`; `read` keeps the rest (in a group they are delivered to this
        consumer already) for the next call."""
        out: list[FrameResult] = []
        if self.group and self._claim_idle_ms is not None and time.monotonic() - self._last_claim > self._claim_idle_ms / 2000:
            out += self.reclaim(self._claim_idle_ms, want)
            if out:
                return out
        if not self._cursor:
            time.sleep((block or 0) / 1000)
            return out
        per_key = max(1, -(-want // len(self._cursor)))
        if self.group:
            own = {k: c for k, c in self._cursor.items() if c != ">"}
            if own:  # own pending entries: returned at once, no blocking
                replies = _redis_call(read_streams, self._client, own, per_key, None, self.group, self.consumer)
                for key, entries in replies or []:
                    key = as_text(key)
                    self._cursor[key] = as_text(entries[-1][0]) if entries else ">"
                    out += self._decode(key, entries)
                if out:
                    return out
            replies = _redis_call(read_streams, self._client, {k: ">" for k in self._cursor}, per_key, block,
                                  self.group, self.consumer)
        else:
            replies = _redis_call(read_streams, self._client, dict(self._cursor), per_key, block)
        for key, entries in replies or []:
            key = as_text(key)
            if entries and not self.group:
                self._cursor[key] = as_text(entries[-1][0])
            out += self._decode(key, entries)
        return out

    def ack(self, *results: FrameResult) -> int:
        """Acknowledge results in the group; returns how many were still pending."""
        if not self.group or not results:
            return 0
        by_key: dict[str, list[str]] = {}
        for r in results:
            by_key.setdefault(r.key, []).append(r.entry_id)
        pipe = self._client.pipeline(transaction=False)
        for key, ids in by_key.items():
            pipe.xack(key, self.group, *ids)
        return sum(_redis_call(pipe.execute))

    def reclaim(self, min_idle_ms: int | None = None, count: int | None = None) -> list[FrameResult]:
        """Take over entries of this group that were delivered but not acked for `min_idle_ms`
        (a consumer crashed or hangs); they are now this consumer's to process and ack."""
        if not self.group:
            raise ConfigError("reclaim needs a consumer group")
        min_idle = self._claim_idle_ms if min_idle_ms is None else min_idle_ms
        if min_idle is None:
            raise ConfigError("reclaim needs min_idle_ms when the consumer has no claim_idle_ms")
        self._last_claim = time.monotonic()
        budget = count or self._count
        out: list[FrameResult] = []
        for key in list(self._cursor):
            cursor = "0-0"
            for _ in range(1000):  # XAUTOCLAIM pages through the pending list; bound the walk
                if budget <= 0:
                    break
                reply = _redis_call(self._client.xautoclaim, key, self.group, self.consumer, min_idle,
                                   start_id=cursor, count=budget)
                cursor, entries = as_text(reply[0]), [e for e in reply[1] if e]
                out += self._decode(key, entries, reclaimed=True)
                budget -= len(entries)
                if cursor == "0-0":
                    break
        return out

    def close(self) -> None:
        """Hand back results fetched but not yet returned by `read`: in a group they are
        delivered to this consumer, so mark them long idle for any member to take over at once."""
        buffered, self._buffer = self._buffer, []
        if not self.group or not buffered:
            return
        by_key: dict[str, list[str]] = {}
        for r in buffered:
            by_key.setdefault(r.key, []).append(r.entry_id)
        for key, ids in by_key.items():
            _redis_call(self._client.xclaim, key, self.group, self.consumer, 0, ids, idle=_RELEASED_IDLE_MS, justid=True)

    def pending(self) -> int:
        """Entries delivered to this group and not yet acked, over all its streams."""
        if not self.group:
            return 0
        total = 0
        for key in self._cursor:
            total += int(_redis_call(self._client.xpending, key, self.group)["pending"])
        return total

    def __iter__(self) -> Iterator[FrameResult]:
        while True:
            yield from self.read()

    @property
    def keys(self) -> list[str]:
        return sorted(self._cursor)

    # -- internals -------------------------------------------------------------------------
    def _discover(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_discovery:
            return
        self._next_discovery = now + self._discover_every_s
        if self._fixed is not None:
            keys = [k for k in self._fixed if k not in self._cursor]
        else:
            found = _redis_call(lambda: list(self._client.scan_iter(match=stream_keys_glob(stream_key, self._prefix),
                                                                    _type="stream")))
            keys = [k for k in (as_text(k) for k in found) if k not in self._cursor]
        for key in keys:
            start_id = self._start_id
            if force and self._latest:
                start_id = "$" if self.group else self._last_id(key)
            if self.group:
                try:
                    _redis_call(self._client.xgroup_create, key, self.group, id=start_id, mkstream=True)
                except redis.ResponseError as e:
                    if "BUSYGROUP" not in str(e):
                        raise SinkError(f"cannot create consumer group {self.group!r} on {key}: {e}") from None
                self._cursor[key] = "0"
            else:
                self._cursor[key] = start_id

    def _last_id(self, key: str) -> str:
        newest = _redis_call(self._client.xrevrange, key, count=1)
        return max(self._start_id, as_text(newest[0][0]), key=_id_tuple) if newest else self._start_id

    def _decode(self, key: str, entries, reclaimed: bool = False) -> list[FrameResult]:
        out, unusable, skipped = decode_entries(key, entries, reclaimed)
        self.skipped += skipped
        if unusable and self.group:  # acked, so they do not come back as pending forever
            _redis_call(self._client.xack, key, self.group, *unusable)
        return out


def decode_entries(key: str, entries, reclaimed: bool = False) -> tuple[list[FrameResult], list[str], int]:
    """Results, the ids of entries there is nothing to process in (undecodable, or pending
    but trimmed since), and how many were undecodable."""
    out: list[FrameResult] = []
    unusable: list[str] = []
    skipped = 0
    for entry_id, fields in entries:
        entry_id = as_text(entry_id)
        if not fields:  # pending, but trimmed (MAXLEN) or deleted since: nothing to process
            unusable.append(entry_id)
            continue
        try:
            out.append(result_from_entry(key, entry_id, fields, reclaimed))
        except (SchemaError, ValueError, KeyError, TypeError) as e:
            skipped += 1
            unusable.append(entry_id)
            log.warning("skipping undecodable entry %s in %s: %s", entry_id, key, e)
    return out, unusable, skipped


def _redis_call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except redis.ResponseError:
        raise
    except redis.RedisError as e:
        raise SinkError(f"Redis: {type(e).__name__}: {e}") from None


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


