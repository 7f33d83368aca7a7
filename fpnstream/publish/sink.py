"""The publish stage: one Redis Streams entry per frame, one script call per batch.

Writes go through a small Lua script so each stream's writes are idempotent and fenced:
- a frame at or below the stream's recorded `last_frame` is skipped, so a retried batch or a
  stream resumed on another worker never duplicates an entry;
- a writer whose owner token is no longer the stream's owner (it was presumed dead and the
  stream moved) is refused, so two workers never interleave one stream.

The token a frame is written with is the one it was decoded under (`Frame.lease`), not
whatever this worker holds now: a worker that gets a stream back while frames of its
earlier claim are still in flight must not write those as the new claim's, or the resume
point would jump past frames the new claim has yet to publish.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from itertools import groupby
from typing import Callable

import redis
from redis.crc import key_slot

from fpnstream.core.errors import SinkError, StreamUnwritable
from fpnstream.core.frames import BatchResult
from fpnstream.core.reports import Resume
from fpnstream.core.redact import redact_text
from fpnstream.publish.connection import is_cluster, left_old_primary
from fpnstream.publish.schema import encode_entry
from fpnstream.publish.keys import events_key, status_key, stream_key

# One call per batch, for every stream in it (on a Redis Cluster: per hash slot, as a
# script may only touch keys of one slot; a stream's keys share one, see keys.py). KEYS: per stream its entries stream, status
# hash and events stream. ARGV[1]: maxlen (0 = none); then per stream: owner token ("" =
# unfenced), the claim's run ("" = not this worker's current claim), entry count, per entry: frame index, field count, field, value, ..., event
# count, per event: field count, field, value, ...; and last the stream's tracker state
# after the batch ("" = not tracked). Returns per stream the entries written, -1 if fenced,
# or why it cannot be written (a key of another type, a counter that is no integer:
# nothing is written).
# A stream's entries, events and state land together or not at all.

# Checked before a stream is touched: a key someone wrote over (a string where the entries
# stream should be) fails the call part-way with WRONGTYPE, every time, which would read as
# an outage retried for ever. Lua scripts are not rolled back, so this check comes first.
_UNFIT = """
local function unfit(...)
  for _, pair in ipairs({...}) do
    local t = redis.call('TYPE', pair[1]).ok
    if t ~= 'none' and t ~= pair[2] then return pair[1] .. ' holds a ' .. t .. ', not a ' .. pair[2] end
  end
  return false
end
-- The status hash's counters as integers, or false and why: a value written over by hand
-- ("abc", or "1e3", which HINCRBY refuses) would fail the call part-way just the same, and
-- so would one past int64 (or near it: the increment overflows); past 15 digits Lua's
-- doubles lose integers too (a huge last_frame would skip every frame for ever).
local function counters(key, ...)
  local out = {}
  for _, field in ipairs({...}) do
    local v = redis.call('HGET', key, field)
    if v and not (string.match(v, '^%-?%d+$') and #v <= 15) then
      return false, key .. "'s " .. field .. ' is not an integer of at most 15 digits'
    end
    out[field] = v and tonumber(v)
  end
  return out
end
"""

_PUBLISH = _UNFIT + """
local maxlen = tonumber(ARGV[1])
local function add(key, from, n)
  local args = {key}
  if maxlen > 0 then args[#args + 1] = 'MAXLEN'; args[#args + 1] = '~'; args[#args + 1] = ARGV[1] end
  args[#args + 1] = '*'
  for f = from, from + 2 * n - 1 do args[#args + 1] = ARGV[f] end
  redis.call('XADD', unpack(args))
end
local out, i = {}, 2
for s = 1, #KEYS / 3 do
  local entries_key, status_key, events_key = KEYS[3 * s - 2], KEYS[3 * s - 1], KEYS[3 * s]
  local owner_arg, run_arg, count = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  local why = unfit({entries_key, 'stream'}, {status_key, 'hash'}, {events_key, 'stream'})
  local c = false
  if not why then c, why = counters(status_key, 'last_frame', 'published', 'run') end
  local owner = not why and redis.call('HGET', status_key, 'owner')
  -- With no record (Redis lost its data), only the writer's current claim may write: a
  -- late frame of an earlier claim, or of one the worker gave up, could move last_frame past
  -- frames the current claim has yet to write.
  local fenced = why or (owner_arg ~= '' and ((owner and owner ~= owner_arg) or (not owner and not c.run and run_arg == '')))
  local last = c and c.last_frame or -1
  local written = 0
  for _ = 1, count do
    local frame, n = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
    local fresh = not fenced and frame > last
    if fresh then add(entries_key, i + 2, n) end
    i = i + 2 + 2 * n
    local events = tonumber(ARGV[i])
    i = i + 1
    for _ = 1, events do
      local k = tonumber(ARGV[i])
      if fresh then add(events_key, i + 1, k) end
      i = i + 1 + 2 * k
    end
    if fresh then last, written = frame, written + 1 end
  end
  local state = ARGV[i]
  i = i + 1
  if why then
    out[s] = why
  elseif fenced then
    out[s] = -1
  else
    -- No run recorded: the claim's record is gone (Redis restarted without its data, or
    -- the hash was deleted). The writer of the stream's current claim writes it back, or
    -- the next claim would take the stream for new and start it over at frame 0.
    if run_arg ~= '' and owner_arg ~= '' and not c.run then
      redis.call('HSET', status_key, 'owner', owner_arg, 'run', run_arg)
    end
    if state ~= '' then redis.call('HSET', status_key, 'tracks', state) end
    redis.call('HSET', status_key, 'last_frame', last)
    redis.call('HINCRBY', status_key, 'published', written)
    out[s] = written
  end
end
return out
"""


# KEYS: status hash, entries stream, events stream. ARGV: owner token ("" = unfenced), "1"
# to start a new run, the run and next frame the job knows of (`Resume`; 0 0: none). One script, so the owner change and the resume point are read and
# written together. Returns {-2, why} if a key holds another type or a counter no integer.
_CLAIM = _UNFIT + """
local why = unfit({KEYS[1], 'hash'}, {KEYS[2], 'stream'}, {KEYS[3], 'stream'})
if why then return {-2, why} end
local c, bad = counters(KEYS[1], 'run', 'last_frame')
if not c then return {-2, bad} end
local run = c.run or 0
local known_run, floor = tonumber(ARGV[3]), tonumber(ARGV[4])
local recovered = 0
if ARGV[2] ~= '1' and run == 0 and known_run > 0 then
  -- The job knows the stream's run, Redis has no record of it: Redis lost its data. The run
  -- goes on after what the job saw published, not from frame 0.
  run, recovered = known_run, 1
  redis.call('HSET', KEYS[1], 'run', run, 'last_frame', math.max(floor - 1, c.last_frame or -1))
elseif ARGV[2] == '1' or run == 0 then
  run = run + 1
  redis.call('HSET', KEYS[1], 'run', run, 'last_frame', -1, 'published', 0)
  redis.call('HDEL', KEYS[1], 'tracks')
elseif run == known_run and floor - 1 > (c.last_frame or -1) then
  -- Redis holds less than the job saw published (it lost writes: a restart without its data
  -- after which a writer that had stopped long before put the claim back): resume after
  -- what the job saw. With Redis intact the job never sees more than Redis has.
  redis.call('HSET', KEYS[1], 'last_frame', floor - 1)
end
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], 'owner', ARGV[1]) end
return {tonumber(redis.call('HGET', KEYS[1], 'last_frame') or '-1') + 1, run, recovered, redis.call('HGET', KEYS[1], 'tracks')}
"""

_SHA = {script: hashlib.sha1(script.encode()).hexdigest() for script in (_PUBLISH, _CLAIM)}

# Ended states after which a stream's next start is a new run (see `starts_new_run`).
_COMPLETED = ("finished",)


def starts_new_run(client: redis.Redis, prefix: str, stream_id: str, restart: bool) -> bool:
    """The one rule for a stream's first start in a job: a new run (frames from 0, run + 1)
    when asked to (`--restart`), when the stream was never run, or when its last run
    finished; otherwise the last run was cut short (a crash, a stop, a failure) and this
    one resumes it after its last published frame."""
    if restart:
        return True
    try:
        state = client.hget(status_key(prefix, stream_id), "state")
    except redis.ResponseError as e:
        if "WRONGTYPE" not in str(e):
            raise
        return True  # no status hash there: the claim refuses the stream, saying why
    return state is None or state.decode() in _COMPLETED


@dataclass(frozen=True, slots=True)
class PublishResult:
    latencies: list[float]  # capture -> acknowledged, seconds, per frame of the batch
    written: dict[str, int]  # entries actually added per stream (duplicates are skipped)
    # (stream, lease) of the claims refused: this writer no longer owns the stream under that
    # lease. Per claim, not per stream: a batch can hold the last frames of a stream's earlier
    # claim on this worker (refused) beside the first ones of its new claim (written).
    fenced: frozenset[tuple[str, str]]
    # (stream, lease) -> why: nothing of that stream was written, and never will be (one of
    # its keys holds another type); the stream fails instead of being retried.
    unwritable: dict[tuple[str, str], str] = field(default_factory=dict)

    def refused(self, stream_id: str, lease: str) -> bool:
        return (stream_id, lease) in self.fenced or (stream_id, lease) in self.unwritable

    @property
    def skipped(self) -> frozenset[tuple[str, str]]:
        """Claims none of whose frames in the batch were written."""
        return self.fenced | self.unwritable.keys()


class RedisStreamSink:
    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        maxlen: int,
        model_name: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._maxlen = maxlen
        self._model = model_name
        self._clock = clock
        self._cluster = is_cluster(client)
        self._runs: dict[str, int] = {}
        self._owners: dict[str, str] = {}  # per stream, the token of this worker's current claim
        self._recovered: dict[str, bool] = {}  # its claim found no record and went on from `known`
        self._tracks: dict[str, bytes | None] = {}

    def claim(self, stream_id: str, owner: str = "", restart: bool = False, known: Resume | None = None) -> int:
        """Become the writer of `stream_id`; returns the next frame index to publish.

        `restart` starts a new run (run number + 1, frames from 0); otherwise the current
        run goes on after its last published frame. Entries carry their run number.
        `owner` is the claim's fencing token: frames decoded for it carry it as `lease`.
        `known`: where the job knows the run to be, used only if Redis has no record of it.
        """
        keys = [status_key(self._prefix, stream_id), stream_key(self._prefix, stream_id), events_key(self._prefix, stream_id)]
        resume = [known.run, known.next_frame] if known is not None else [0, 0]
        reply = self._evalsha(_CLAIM, keys, [owner, "1" if restart else "0", *resume])
        if reply[0] == -2:
            raise StreamUnwritable(f"stream {stream_id}: {reply[1].decode(errors='replace')}; delete or rename that key")
        next_frame, run, recovered, *tracks = reply
        tracks = tracks[0] if tracks else None
        self._runs[stream_id] = int(run)
        self._owners[stream_id] = owner
        self._recovered[stream_id] = bool(recovered)
        self._tracks[stream_id] = tracks or None
        return int(next_frame)

    def saved_tracks(self, stream_id: str) -> bytes | None:
        """The stream's tracker state as of its last published frame (read by `claim`)."""
        return self._tracks.pop(stream_id, None)

    def run_of(self, stream_id: str) -> int:
        return self._runs.get(stream_id, 1)

    def release(self, stream_id: str, lease: str | None = None) -> None:
        """This worker no longer holds its claim of `stream_id` (only if it is `lease`, when
        given): it moved, or was taken away. Its late frames never write a lost claim back."""
        if lease is None or self._owners.get(stream_id) == lease:
            self._owners.pop(stream_id, None)

    def recovered(self, stream_id: str) -> bool:
        """Whether the last claim of `stream_id` found no record in Redis and went on from `known`."""
        return self._recovered.get(stream_id, False)

    def _evalsha(self, script: str, keys: list[str], args: list, again: bool = True) -> list:
        """A script in one round trip; loaded into Redis the first time (or again after a
        Redis restart lost its script cache). Not redis-py's Script: it asks SCRIPT EXISTS
        before every call, and on a cluster it would connect in our constructor."""
        sha = _SHA[script]
        try:
            return self._client.evalsha(sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self._client.script_load(script)  # on a cluster: loaded on every primary
            return self._client.evalsha(sha, len(keys), *keys, *args)
        except redis.ResponseError as e:  # refused as a whole (a replica writes nothing): safe to repeat, once
            if not again or not left_old_primary(self._client, e):
                raise
            return self._evalsha(script, keys, args, again=False)

    def publish(self, result: BatchResult) -> PublishResult:
        """Write the batch in one round trip.

        The payload's latency_ms is taken just before the write (it has to be inside the
        entry); the returned latencies, used for metrics, include the Redis round trip.
        """
        now = self._clock()
        events: dict[tuple[str, int], list] = {}
        for e in result.events:
            events.setdefault((e.stream_id, e.frame), []).append(e)
        calls: dict[int, tuple[list[str], list, list[tuple[str, str]]]] = {}  # slot (0 on one server) -> keys, args, claims
        # One group per stream and claim (a batch holds one claim's frames of a stream; the
        # grouping keeps that true whatever comes). Stable sort: frame order is kept.
        pairs = sorted(zip(result.metas, result.detections), key=lambda p: (p[0].stream_id, p[0].lease))
        for (sid, lease), group in groupby(pairs, key=lambda p: (p[0].stream_id, p[0].lease)):
            entries_key = stream_key(self._prefix, sid)
            keys, args, order = calls.setdefault(key_slot(entries_key.encode()) if self._cluster else 0,
                                                 ([], [self._maxlen], []))
            run = self._runs.get(sid, 1)
            group = list(group)
            args += [lease, run if self._owners.get(sid) == lease else "", len(group)]
            for meta, dets in group:
                fields = encode_entry(meta, dets, self._model, now, run)
                args += [meta.index, len(fields)]
                for k, v in fields.items():
                    args += [k, v]
                frame_events = events.get((sid, meta.index), ())
                args.append(len(frame_events))
                for e in frame_events:
                    ef = e.to_fields(run)
                    args.append(len(ef))
                    for k, v in ef.items():
                        args += [k, v]
            analytics = result.analytics.get(sid)
            args.append(analytics.state if analytics is not None else "")
            keys += [entries_key, status_key(self._prefix, sid), events_key(self._prefix, sid)]
            order.append((sid, lease))
        written: dict[str, int] = {}
        fenced: set[tuple[str, str]] = set()
        unwritable: dict[tuple[str, str], str] = {}
        try:
            # A failure part-way through a cluster's calls leaves some streams written: the
            # retry skips their frames (at or below last_frame), so nothing is duplicated.
            for keys, args, order in calls.values():
                for (sid, lease), n in zip(order, self._evalsha(_PUBLISH, keys, args)):
                    if isinstance(n, bytes):
                        unwritable[(sid, lease)] = f"stream {sid}: {n.decode(errors='replace')}; delete or rename that key"
                    elif n == -1:
                        fenced.add((sid, lease))
                        self.release(sid, lease)
                    else:
                        written[sid] = written.get(sid, 0) + int(n)
        except redis.RedisError as e:
            raise SinkError(f"publishing to Redis failed: {redact_text(str(e))}") from None
        done = self._clock()
        return PublishResult([done - m.capture_ts for m in result.metas], written, frozenset(fenced), unwritable)
