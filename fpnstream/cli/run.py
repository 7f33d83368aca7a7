"""`fpnstream run`: load the config, run the job, print the summary; SIGINT/SIGTERM drain."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any

from fpnstream.cli.logs import setup_logging
from fpnstream.cli.parser import run_overrides
from fpnstream.cli.status_view import status_view
from fpnstream.core.failpoints import Failpoints

log = logging.getLogger("fpnstream")


def _install_stop_handlers(stop: threading.Event) -> None:
    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():  # second signal: the user means it
            sys.stderr.write("fpnstream: forced exit; frames still in flight are lost\n")
            os._exit(130)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def cmd_run(a: argparse.Namespace) -> int:
    from fpnstream.config.settings import load_config

    cfg = load_config(a.config, run_overrides(a))
    # Workers read the failpoints (test instrumentation) as they load; a spec they cannot
    # follow fails here, once, not in every worker as it is restarted.
    Failpoints.from_environ(os.environ)
    from fpnstream.job import run_job

    handler = setup_logging(cfg.log_level)
    stop = threading.Event()
    _install_stop_handlers(stop)
    view = status_view(cfg.status_interval_s, handler, tty=sys.stderr.isatty())
    try:
        report = run_job(cfg, stop, on_tick=view)
    finally:
        if view is not None:
            view.close()
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
