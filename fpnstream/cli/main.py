"""Command line: `fpnstream run | tail | streams | bench | annotate | preview | synth`.
Errors are one line on stderr, never a traceback."""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Sequence

from fpnstream.cli.parser import _parser
from fpnstream.cli.redis_commands import cmd_streams, cmd_tail
from fpnstream.cli.run import cmd_run
from fpnstream.cli.tools import cmd_annotate, cmd_bench, cmd_preview, cmd_synth
from fpnstream.core.errors import FpnstreamError
from fpnstream.core.redact import redact_text


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    a = parser.parse_args(argv)
    handlers = {"run": cmd_run, "tail": cmd_tail, "streams": cmd_streams, "synth": cmd_synth, "bench": cmd_bench,
                "annotate": cmd_annotate, "preview": cmd_preview}
    try:
        rc = handlers[a.command](a)
        if a.command == "run" and threading.active_count() > 1:
            # Everything is published and every server we started is stopped. A decoder thread
            # may still sit in a blocking FFmpeg read (a silent camera); letting the interpreter
            # tear down under it can crash, so leave now.
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
        return rc
    except FpnstreamError as e:
        print(f"fpnstream: error: {redact_text(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("fpnstream: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if a.debug:
            raise
        print(
            f"fpnstream: internal error: {type(e).__name__}: {redact_text(str(e)).splitlines()[0] if str(e) else ''} "
            "(rerun with --debug for a traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
