"""One job per Redis prefix: a lease key the running job keeps renewing.

Two jobs on one prefix share the control channel, the status hashes and the stream keys;
exactly-once still holds (claims fence each other) but each re-claims the streams the other
took, for ever. So a job takes `<prefix>:job` before it starts anything, and a second one
is refused with who holds it. The key has a TTL the holder renews every `renew_s` from a
thread of its own (a coordinator tick can block for seconds on a worker), so a job that
was killed leaves a key that stops being renewed: a newcomer that finds the lease watches
it for a few renewals and takes it over when it was not renewed, instead of waiting for
it to expire or refusing for ever.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Callable

import redis

from fpnstream.core.errors import JobConflict, SinkError
from fpnstream.core.redact import redact_text
from fpnstream.publish.keys import job_key

log = logging.getLogger(__name__)

# KEYS[1]: the lease. ARGV: our value, TTL in ms. 1 if the lease is ours (renewed), 0 if not.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS[1]: the lease. ARGV: the value seen (a holder that stopped renewing), ours, TTL in ms.
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]); return 1 end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class JobLease:
    def __init__(self, client: redis.Redis, prefix: str, ttl_s: float = 10.0, renew_s: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._client = client
        self._prefix = prefix
        self._key = job_key(prefix)
        self._ttl_ms = int(ttl_s * 1000)
        self._renew_s = renew_s
        self._sleep = sleep
        self.value = json.dumps({"token": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                                 "since": round(time.time(), 3)})
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost = False

    def acquire(self) -> None:
        """Take the lease, or take over one that is no longer renewed; JobConflict if
        another job holds it and is alive."""
        try:
            self._acquire()
        except redis.ResponseError as e:
            if "WRONGTYPE" in str(e):  # the key holds another type: no job's lease
                raise JobConflict(f"cannot take the job lease {self._key}: {redact_text(str(e))}; delete that key") from None
            raise SinkError(f"cannot take the job lease {self._key}: {redact_text(str(e))}") from None
        except redis.RedisError as e:
            raise SinkError(f"cannot take the job lease {self._key}: {redact_text(str(e))}") from None
        self._thread = threading.Thread(target=self._keep, name="job-lease", daemon=True)
        self._thread.start()

    def _acquire(self) -> None:
        for _ in range(5):  # the key changes hands under us only if jobs race each other
            if self._client.set(self._key, self.value, nx=True, px=self._ttl_ms):
                break
            seen, ttl_before = self._client.get(self._key), self._client.pttl(self._key)
            if seen is None:
                continue
            # Four renewals long: a live holder's TTL stays within one renewal of full, a dead
            # one's runs down by the whole wait; the line between is 1.5 renewals from both.
            watch_ms = 4000 * self._renew_s
            self._sleep(watch_ms / 1000)
            now_seen, ttl_after = self._client.get(self._key), self._client.pttl(self._key)
            if now_seen != seen:
                continue
            # A key without a TTL (-1) is no job's lease (a job always sets one): taken over.
            if ttl_before >= 0 and ttl_after > ttl_before - 0.625 * watch_ms:
                raise JobConflict(_conflict(seen, self._prefix))
            if self._client.eval(_TAKE_OVER, 1, self._key, seen, self.value, self._ttl_ms):
                log.warning("the job last on prefix %s (%s) stopped renewing its lease; this job takes over",
                            self._prefix, describe_holder(seen))
                break
        else:
            raise JobConflict(f"jobs keep starting on Redis prefix {self._prefix!r} at once; start one")

    def _keep(self) -> None:
        while not self._stop.wait(self._renew_s):
            try:
                if self._client.eval(_RENEW, 1, self._key, self.value, self._ttl_ms):
                    self._lost = False
                    continue
                # Gone: Redis restarted without its data, or was away past the TTL (or the
                # job is ending and released it while this renewal was on its way).
                if self._stop.is_set():
                    continue
                if self._client.set(self._key, self.value, nx=True, px=self._ttl_ms):
                    log.warning("the job lease %s was gone while this job held it (Redis restarted without its "
                                "data, or was out of reach past the lease's %g s); taken again. Streams go on "
                                "from their workers' positions", self._key, self._ttl_ms / 1000)
                    continue
                if not self._lost:
                    self._lost = True
                    log.error("another job took Redis prefix %s (%s) while this one was cut off; both now "
                              "claim the same streams (no frame is written twice)", self._prefix,
                              describe_holder(self._client.get(self._key)))
            except redis.RedisError as e:  # an outage: the job goes on, the lease is renewed when Redis is back
                log.debug("job lease not renewed: %s", redact_text(str(e)))

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            self._client.eval(_RELEASE, 1, self._key, self.value)
        except redis.RedisError as e:  # it expires by itself
            log.debug("job lease not released: %s", redact_text(str(e)))

    def __enter__(self) -> JobLease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def describe_holder(value: bytes | None) -> str:
    """Who holds a lease, in one line, for messages (host, pid, since when)."""
    try:
        d = json.loads(value or b"{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(d["since"])))
        return " ".join(f"host {d['host']}, pid {d['pid']}, since {since}".split())  # one line, whatever is in Redis
    except (ValueError, KeyError, TypeError):
        return "a holder this version cannot read"


def _conflict(value: bytes, prefix: str) -> str:
    return (f"another fpnstream job is running on Redis prefix {prefix!r} ({describe_holder(value)}); stop it, "
            f"or give this job its own --redis-prefix")
