"""Keep credentials out of logs, errors, stream ids, metric labels and Redis payloads."""

from __future__ import annotations

import re

# scheme://user:password@host -> scheme://***@host ; also catches URLs embedded in messages.
# Greedy up to the last "@" before the path or a space: a password typed with a raw "@",
# "#" or "?" (which belong percent-encoded) is still all user-info to a camera's firmware.
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^/\s]*)@")


def redact_url(url: str) -> str:
    """Return `url` with any user-info replaced by ``***``.

    By the pattern, not by `urlsplit`: that ends the authority at a raw "#" or "?", so in
    `rtsp://admin:pa#ss@cam/x` it sees no user-info and in `redis://:p@ss?@h/0` the wrong one."""
    return redact_text(url)


def redact_text(text: str) -> str:
    """Redact user-info of every URL that appears inside free text (e.g. FFmpeg error messages)."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", text)
