"""Commands from the control channel (`fpnstream streams add/remove`), applied to a running
job. Anyone who can write to Redis can send one, so a command is data: checked like a
config file, and nothing it holds can end the job."""

from __future__ import annotations

import json
import logging
import re
from typing import Callable

from fpnstream.config.settings import SourceConfig, make_source
from fpnstream.core.ids import STREAM_ID
from fpnstream.core.redact import redact_text
from fpnstream.core.reports import StreamState

log = logging.getLogger(__name__)


def source_of(cmd: dict[str, str]) -> SourceConfig:
    """The stream an `add` command asks for: its analytics are JSON, validated like a config
    file, and set nothing but analytics."""
    fps = float(cmd["fps"]) if cmd.get("fps") else None
    analytics = json.loads(cmd["analytics"]) if cmd.get("analytics") else {}
    if not isinstance(analytics, dict):
        raise ValueError("analytics must be a JSON object")
    if clash := sorted({"uri", "id", "fps", "live"} & analytics.keys()):
        raise ValueError(f"analytics may not set {', '.join(clash)}")
    if cmd.get("live", "") not in ("", "0", "1"):
        raise ValueError("live must be 0 or 1")
    live = {"": None, "0": False, "1": True}[cmd.get("live", "")]
    # make_source: one line without the input values (pydantic's own message quotes a
    # shortened URL, which no redaction pattern recognises: its password or key showed)
    return make_source(uri=cmd["uri"], id=cmd.get("id") or None, fps=fps, live=live, **analytics)


class ControlCommands:
    def __init__(self, add: Callable[[list[SourceConfig]], list[str]], remove: Callable[[str], bool],
                 running: Callable[[str], bool], write_status: Callable[[str, dict], None]) -> None:
        """`add`/`remove`: the coordinator's; `running(id)`: a stream of that id runs now;
        `write_status`: a stream's status hash (for a refused command's reason)."""
        self._add, self._remove, self._running, self._write_status = add, remove, running, write_status

    def apply(self, cmd: dict[str, str]) -> None:
        op = cmd.get("op")
        try:
            if op == "add":
                log.info("control: added stream(s) %s", ", ".join(self._add([source_of(cmd)])))
            elif op == "remove":
                if self._remove(cmd.get("id", "")):
                    log.info("control: removed stream %s", cmd["id"])
                else:
                    log.warning("control: no running stream %r to remove", cmd.get("id"))
            else:
                log.warning("control: unknown command %r ignored", op)
        except Exception as e:  # e.g. a RecursionError from deeply nested JSON: no command ends the job
            why = redact_text(str(e) or type(e).__name__)
            log.warning("control: %s command rejected: %s", op, why)
            sid = cmd.get("id", "")
            # Said in the status of the stream it names, unless that one runs (a second add of
            # a running stream is refused; the running one is not failed) or the id is no id.
            if re.fullmatch(STREAM_ID, sid) and not self._running(sid):
                self._write_status(sid, {"state": StreamState.FAILED, "error": why})
