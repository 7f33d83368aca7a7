"""Keep credentials out of logs, errors, stream ids, metric labels and Redis payloads."""

from __future__ import annotations

import re

# scheme://user:password@host -> scheme://***@host ; also catches URLs embedded in messages.
# Greedy up to the last "@" before a space: a password typed with a raw "@", "/", "#" or
# "?" (which belong percent-encoded) is still all user-info to a camera's firmware. An "@"
# later in a URL's path or query hides a little more than needed: the safe side.
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>\S*)@")
# Credentials in a query: redis-py reads unix:///path?password=..., SRT its encryption key
# from ?passphrase=, and cameras and streaming servers take tokens, keys and signatures so.
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&](?:password|passwd|pass|pwd|passphrase|token|access_token|secret|key|apikey|api_key|auth|"
    r"signature|sig)=)(?P<value>[^&\s]*)", re.IGNORECASE)


# RTMP carries its stream key, the credential a server lets publish or play with, as the
# path's last segment after the application: rtmp://host/app/KEY (what YouTube, Twitch,
# nginx-rtmp and SRS hand out). Matched after the user-info is hidden, so a raw "/" in a
# password cannot shift it; "?" and "#" end it, as they end a path.
# The RTMP family FFmpeg speaks: rtmp, rtmps, rtmpe, rtmpt, rtmpte, rtmpts. A segment ends
# at a quote, comma or bracket too, so in a list of URLs each key is found.
_RTMP_KEY = re.compile(r"(?P<head>\brtmp(?:s|e|t|te|ts)?://[^/\s?#]+/(?:[^/\s?#\"',<>()\[\]]+/)+)"
                       r"(?P<key>[^/\s?#\"',<>()\[\]]+)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """Return `url` with any user-info replaced by ``***``.

    By the pattern, not by `urlsplit`: that ends the authority at a raw "#" or "?", so in
    `rtsp://admin:pa#ss@cam/x` it sees no user-info and in `redis://:p@ss?@h/0` the wrong one."""
    return redact_text(url)


def redact_text(text: str) -> str:
    """Redact user-info and query credentials of every URL inside free text (e.g. FFmpeg
    error messages)."""
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", text)
    text = _RTMP_KEY.sub(lambda m: f"{m.group('head')}***", text)
    return _QUERY_SECRET.sub(lambda m: f"{m.group('key')}***", text)


def rtmp_key(url: str) -> str | None:
    """The stream key of an RTMP(S) URL (`redact_text` hides it), None without one."""
    m = _RTMP_KEY.match(_USERINFO.sub(lambda m: f"{m.group('scheme')}***@", url.strip()))
    return None if m is None else m.group("key")


def query_secrets(url: str) -> list[str]:
    """The values of `url`'s query parameters that `redact_text` hides."""
    return [m.group("value") for m in _QUERY_SECRET.finditer(url)]


def userinfo(url: str) -> str | None:
    """The user-info of `url` as `redact_url` sees it ("user:password"), None without one."""
    m = _USERINFO.match(url.strip())
    return None if m is None else m.group("userinfo")
