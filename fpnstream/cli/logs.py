"""Logging for the commands: one line per record on stderr, credentials always redacted."""

from __future__ import annotations

import logging
import sys

from fpnstream.core.redact import redact_text


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def setup_logging(level: str) -> logging.StreamHandler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("fpnstream")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    return handler
