"""Failpoints: named places in the code where a test can inject a fault (as FoundationDB and
TiKV do). Inert unless the process was started with FPNSTREAM_FAILPOINTS set; the variable
is read once, by the process entry points, never inside the pipeline.

    FPNSTREAM_FAILPOINTS="detector.hang:after=20:once=/tmp/x/hung"

`detector.hang`: the N+1-th batch never returns (the lane sleeps forever, the process keeps
answering). `detector.crash`: the N+1-th batch raises, as a bug or an out-of-memory would.
`claim.reply_lost`: a worker's N+1-th claim is made in Redis, then its reply is lost (a
Redis timeout), as when the connection drops right after the script ran. `once=PATH`: fire in one process only, the first to create PATH (so the worker
Ray restarts does not hang again).
"""

from __future__ import annotations

import os
import threading
from typing import Mapping

from fpnstream.core.errors import ConfigError

ENV = "FPNSTREAM_FAILPOINTS"


KNOWN = ("detector.hang", "detector.crash", "claim.reply_lost")


class Failpoints:
    def __init__(self, spec: str = "") -> None:
        """Raises ConfigError for a spec it cannot follow: a failpoint that never fires as
        asked would make a fault test pass for the wrong reason, or loop a worker forever."""
        self._points: dict[str, dict[str, str]] = {}
        for item in filter(None, (p.strip() for p in spec.split(";"))):
            name, *opts = item.split(":")
            if name not in KNOWN:
                raise ConfigError(f"{ENV}: unknown failpoint {name!r} (known: {', '.join(KNOWN)})")
            parsed = dict(o.partition("=")[::2] for o in opts)
            if not set(parsed) <= {"after", "once"} or not parsed.get("after", "0").isdigit() or "" in parsed.values():
                raise ConfigError(f"{ENV}: {item!r}: options are after=N (a count) and once=PATH")
            self._points[name] = parsed
        self._hits: dict[str, int] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Failpoints:
        return cls(environ.get(ENV, ""))

    @property
    def active(self) -> bool:
        return bool(self._points)

    def fires(self, name: str) -> bool:
        opts = self._points.get(name)
        if opts is None:
            return False
        with self._lock:
            n = self._hits[name] = self._hits.get(name, 0) + 1
        if n <= int(opts.get("after", "0")):
            return False
        marker = opts.get("once")
        if marker:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return False
        return True

    def raise_if(self, name: str) -> None:
        if self.fires(name):
            raise RuntimeError(f"failpoint {name} fired")

    def hang_if(self, name: str) -> None:
        if self.fires(name):
            threading.Event().wait()  # forever, GIL released: the process stays responsive


NO_FAILPOINTS = Failpoints()
