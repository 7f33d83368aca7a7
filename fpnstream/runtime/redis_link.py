"""The coordinator's Redis calls outside the publish path (status hashes, the workers hash,
the control channel), made so that an outage never stops the job.

A call that fails marks the link down and returns a default at once; while down, calls
return their defaults without touching the network, and `probe()` tries again with backoff:
a PING when Redis was out of reach, the refused call itself when Redis answered but refused
it (out of memory, a replica's READONLY, ...), since Redis then answers PING all along and a
PING would call it back at every probe while it still refuses every write. Every write the coordinator makes here is the latest state of something it
rewrites every tick, so skipping writes during an outage loses nothing; reads (the control
channel) resume from where they were. Detection and publishing go on meanwhile: workers
buffer their results (fpnstream.publish.spool) and publish them exactly once when Redis is back.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Callable, TypeVar

import redis
from redis.exceptions import ClusterDownError, OutOfMemoryError, ReadOnlyError, TryAgainError

from fpnstream.core.redact import redact_text
from fpnstream.core.backoff import Backoff

log = logging.getLogger(__name__)
T = TypeVar("T")


class RedisLink:
    def __init__(self, client: redis.Redis, on_down: Callable[[], None] = lambda: None,
                 on_up: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self._on_down, self._on_up, self._clock = on_down, on_up, clock
        self._backoff = Backoff(0.25, 2.0)  # a PING every 2 s at most is cheap; readiness follows Redis closely
        self._up = True
        self._down_at = 0.0  # when the current outage began (clock)
        self._next_probe = 0.0
        self._retry: Callable[[], Any] | None = None  # what probes while Redis refuses calls (else a PING)
        self._refusals: set[str] = set()

    @property
    def up(self) -> bool:
        return self._up

    @property
    def down_s(self) -> float:
        """How long Redis has been away (0 while up)."""
        return 0.0 if self._up else self._clock() - self._down_at

    def call(self, fn: Callable[..., T], *args: Any, default: T = None, **kwargs: Any) -> T:
        if not self._up:
            return default
        try:
            return fn(*args, **kwargs)
        except redis.ResponseError as e:
            if refuses_every_write(e):
                # Each such call is the latest state of something rewritten every tick, or a
                # read: made again as the probe, it does no harm.
                self._mark_down(e, retry=lambda: fn(*args, **kwargs))
            else:
                self._refused(e)
            return default
        except redis.RedisError as e:
            self._mark_down(e)
            return default

    def _refused(self, e: Exception) -> None:
        """Redis is up and refuses this call, every time: a key of another type (someone
        wrote over a stream's status hash: that stream's own check fails it), an ACL without
        this key or command (NOPERM), a proxy that lacks the command. Not an outage: the
        call would be refused for ever, and the coordinator kept away from Redis with it."""
        # Values in a pipeline's command change every tick: the command and key only, so the
        # same refusal is said once.
        text = _short(redact_text(str(e)).splitlines()[0])
        if text not in self._refusals:  # said once: the same call comes back every tick
            self._refusals.add(text)
            log.warning("Redis refused a coordinator call: %s", text)

    def probe(self) -> bool:
        """While down: one try when the backoff allows (a PING, or the refused call). Returns
        whether Redis is up."""
        if self._up:
            return True
        if self._clock() < self._next_probe:
            return False
        try:
            (self._retry or self.client.ping)()
        except redis.ResponseError as e:
            if refuses_every_write(e):  # still
                self._next_probe = self._clock() + self._backoff.next_delay()
                return False
            self._refused(e)  # Redis takes calls again; this one it refuses by itself
        except redis.RedisError:
            self._next_probe = self._clock() + self._backoff.next_delay()
            return False
        self._up, self._retry = True, None
        self._backoff.reset()
        log.info("Redis is back; coordinator resumes status updates and control commands")
        self._on_up()
        return True

    def _mark_down(self, e: Exception, retry: Callable[[], Any] | None = None) -> None:
        """`retry`: Redis answered, refusing the call: the probe makes it again (None: a PING)."""
        if self._up:
            why = redact_text(str(e)).splitlines()[0] if str(e) else type(e).__name__
            log.warning("%s (%s); detection goes on, results are buffered, retrying with backoff",
                        "Redis refuses the coordinator's calls" if retry else "Redis unreachable from the coordinator",
                        _short(why))
            self._up, self._retry = False, retry
            self._down_at = self._clock()
            self._on_down()
        self._next_probe = self._clock() + self._backoff.next_delay()


# Refusals of every write while they last (redis-py's classes for some, the reply's first
# word for the rest): full (OOM), a replica (READONLY), a failing background save (MISCONF),
# a long script (BUSY), too few replicas, a cluster without a quorum or moving slots.
_AWAY = (OutOfMemoryError, ReadOnlyError, ClusterDownError, TryAgainError)
_AWAY_CODES = frozenset({"OOM", "READONLY", "MISCONF", "BUSY", "NOREPLICAS", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN"})


def refuses_every_write(e: redis.ResponseError) -> bool:
    reply = str(e).split(" of pipeline caused error: ", 1)[-1]
    return isinstance(e, _AWAY) or reply.split(" ", 1)[0] in _AWAY_CODES


def _short(why: str) -> str:
    """A pipeline's error quotes its whole command (every stream's status): the command and key do."""
    m = re.match(r"Command # \d+ \((\S+) (\S+).*\) of pipeline caused error: (.*)", why)
    return f"{m[1]} {m[2]}: {m[3]}" if m else why


class OutageDeadline:
    """The end-of-run rule for a Redis outage, for a whole job, as the in-process publisher
    has it for its own: once nothing but publishing is left, wait at most `wait_s` for Redis
    (counted from when that began, however long Redis had been away before), then give up."""

    def __init__(self, wait_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._wait_s, self._clock = wait_s, clock
        self._since: float | None = None

    def expired(self, stuck: bool) -> bool:
        """`stuck`: Redis is away and only publishing is left, now."""
        if not stuck:
            self._since = None
            return False
        if self._since is None:
            self._since = self._clock()
        return self._clock() - self._since >= self._wait_s
