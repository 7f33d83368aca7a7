"""Keep credentials out of logs, errors, stream ids, metric labels and Redis payloads."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

# scheme://user:password@host -> scheme://***@host ; also catches URLs embedded in messages.
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^/@\s]*)@")


def redact_url(url: str) -> str:
    """Return `url` with any user-info replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"***@{host}" + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact_text(text: str) -> str:
    """Redact user-info of every URL that appears inside free text (e.g. FFmpeg error messages)."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", text)
