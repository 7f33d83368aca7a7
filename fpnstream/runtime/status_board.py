"""The coordinator's side of Redis: stream status hashes, the workers hash, the control
channel and the run decision. All of it goes through a `RedisLink`, so an outage skips
calls instead of ending the job (see fpnstream.runtime.redis_link)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from fpnstream.core.reports import WorkerInfo
from fpnstream.observe.metrics import DriverMetrics
from fpnstream.publish.control import write_statuses
from fpnstream.publish.keys import control_key, workers_key
from fpnstream.publish.keys import status_key
from fpnstream.publish.sink import starts_new_run
from fpnstream.runtime.redis_link import RedisLink


class StatusBoard:
    def __init__(self, client, prefix: str, driver_metrics: DriverMetrics, control_from: bytes | str | None = None) -> None:
        """`control_from`: the control channel's end when the job took the prefix (commands
        after it count); None: read when the control channel starts."""
        self._client = client
        self._prefix = prefix
        self._metrics = driver_metrics
        self.link = RedisLink(client, on_down=self._down, on_up=lambda: driver_metrics.redis_up.set(1))
        self._control_last: bytes | str | None = control_from  # None: not yet known (Redis away at start)

    def _down(self) -> None:
        self._metrics.redis_up.set(0)
        self._metrics.redis_outages.inc()

    @property
    def up(self) -> bool:
        return self.link.up

    def probe(self) -> None:
        self.link.probe()

    def write(self, stream_id: str, fields: dict[str, Any]) -> None:
        self.link.call(write_statuses, self._client, self._prefix, {stream_id: fields})

    def write_all(self, rows: dict[str, dict[str, Any]]) -> None:
        """Every stream's status in one round trip."""
        self.link.call(write_statuses, self._client, self._prefix, rows)

    def record_worker(self, index: int, info: WorkerInfo) -> bool:
        """Where a worker runs (host, pid), for operators and fault-injection tests."""
        done = self.link.call(self._client.hset, workers_key(self._prefix), str(index), json.dumps(asdict(info)))
        return done is not None

    def starts_new_run(self, stream_id: str, restart: bool) -> bool | None:
        """None while Redis is away: the decision needs the stream's last state."""
        return self.link.call(starts_new_run, self._client, self._prefix, stream_id, restart)

    def claimed_by(self, stream_id: str, owner: str) -> bool:
        """Whether `owner` holds the stream's claim in Redis (False if Redis is away): a claim
        whose reply was lost may still have been made."""
        held = self.link.call(self._client.hget, status_key(self._prefix, stream_id), "owner")
        return held is not None and held.decode(errors="replace") == owner

    def published(self, stream_id: str) -> int | None:
        """Frames of the current run in Redis, all owners together; None if Redis is away."""
        n = self.link.call(self._client.hget, status_key(self._prefix, stream_id), "published")
        try:
            return None if n is None else int(n)
        except ValueError:  # written over by hand: the stream failed for it (see sink.py), the job goes on
            return None

    # -- the control channel ---------------------------------------------------------------
    def start_control(self) -> None:
        """Only commands sent after the job started count. With Redis away now, the channel's
        end is read when it is back (nothing can be sent meanwhile)."""
        if self._control_last is not None:  # known since the job took the prefix
            return
        last = self.link.call(self._client.xrevrange, control_key(self._prefix), count=1)
        if last is not None:
            self._control_last = last[0][0] if last else "0-0"

    def read_commands(self) -> list[dict[str, str]]:
        """New commands; during an outage none, and the next read starts where this one was."""
        if self._control_last is None:
            self.start_control()
            return []
        reply = self.link.call(self._client.xread, {control_key(self._prefix): self._control_last}, count=100, block=None)
        out = []
        for _key, entries in reply or []:
            for entry_id, fields in entries:
                self._control_last = entry_id
                # Anyone with write access to Redis can send one: bytes that are not UTF-8
                # become U+FFFD and the command is then rejected by its checks, not the job.
                out.append({k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()})
        return out
