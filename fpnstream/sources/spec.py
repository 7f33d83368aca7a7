"""What a source is: a stream id, a URI (possibly with credentials) and whether it is live."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable
from urllib.parse import unquote, urlsplit

from fpnstream.config.analytics import LineConfig, TrackingOverride, ZoneConfig
from fpnstream.config.settings import SourceConfig, make_source
from fpnstream.core.errors import SourceError
from fpnstream.core.ids import STREAM_ID
from fpnstream.core.redact import redact_url, rtmp_key

LIVE_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "srt", "udp", "tcp", "http", "https"})
_ID_PREFIX = re.compile(rf"^(?P<id>{STREAM_ID})=(?P<uri>.+)$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


@dataclass(frozen=True, slots=True)
class SourceSpec:
    stream_id: str
    uri: str  # may carry credentials: log `display`, never this
    live: bool
    fps: float | None = None
    live_by_uri: bool = True  # `live` is the URI's default, not what the source said
    realtime: bool = False  # a file played at its recorded rate, like a camera
    tracking: TrackingOverride | None = None  # per-stream changes to the job's `tracking:`
    zones: tuple[ZoneConfig, ...] = ()
    lines: tuple[LineConfig, ...] = ()

    @property
    def display(self) -> str:
        return redact_url(self.uri)

    @property
    def local(self) -> bool:
        """A path on this machine (a file, or a pipe or device told to be live), not a URL."""
        return _scheme(self.uri) in ("", "file")

    @property
    def path(self) -> Path:
        """Local file path of a file source."""
        return Path(unquote(urlsplit(self.uri).path)) if self.uri.startswith("file://") else Path(self.uri)


def parse_source_arg(arg: str) -> SourceConfig:
    """Parse a command-line source, ``URI`` or ``ID=URI``.

    A URI may itself contain '=' (query strings), so a prefix only counts as an id when it
    is a plain identifier before any ':' or '/'.
    """
    m = _ID_PREFIX.match(arg)
    if m and not any(c in m.group("id") for c in ":/"):
        return make_source(id=m.group("id"), uri=m.group("uri"))
    return make_source(uri=arg)


def _scheme(uri: str) -> str:
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.\-]*)://", uri)
    return m.group(1).lower() if m else ""


def default_stream_id(uri: str) -> str:
    """A readable id from the URI: a file's stem, or host+path of a network URL, never user-info."""
    scheme = _scheme(uri)
    suffix = ""
    if scheme in ("", "file"):
        stem = SourceSpec("x", uri, False).path.stem
        base = stem
    else:
        parts = urlsplit(redact_url(uri))  # urlsplit alone misreads a raw "/" or "#" in a password
        path = parts.path.strip("/")
        if (key := rtmp_key(uri)) is not None:
            # The key is a secret (redact_url hid it): a digest of it tells two streams of one
            # application apart and stays the same across restarts, as an id must (it keys
            # the stream's Redis state), without the key in keys, labels or logs. Kept whole
            # when a long host and path are cut to fit the id's length.
            path = path.removesuffix("***").rstrip("/")
            suffix = f"_k{hashlib.sha256(key.encode()).hexdigest()[:10]}"
        base = "-".join(p for p in [parts.hostname or "", path] if p)
    cleaned = _UNSAFE.sub("_", base).strip("_.-")[:128 - len(suffix)].rstrip("_.-")
    return (cleaned or "stream") + suffix


def resolve_sources(configs: Iterable[SourceConfig]) -> list[SourceSpec]:
    configs = list(configs)
    specs: list[SourceSpec] = []
    # Explicit ids win over generated ones whatever their order on the command line.
    explicit = [c.id for c in configs if c.id is not None]
    dupes = sorted({i for i in explicit if explicit.count(i) > 1})
    if dupes:
        raise SourceError(f"duplicate stream id {dupes[0]!r}")
    taken: set[str] = set(explicit)
    for cfg in configs:
        scheme = _scheme(cfg.uri)
        if scheme not in ("", "file") and scheme not in LIVE_SCHEMES:
            raise SourceError(
                f"unsupported source scheme {scheme!r} in {redact_url(cfg.uri)}; "
                "use a file path, file://, rtsp://, rtmp://, srt://, udp:// or http(s)://"
            )
        if cfg.id is not None:
            sid = cfg.id
        else:
            base = default_stream_id(cfg.uri)
            sid, n = base, 2
            while sid in taken:
                sid, n = f"{base}-{n}", n + 1
        taken.add(sid)
        if cfg.live is False and scheme not in ("", "file", "http", "https"):
            raise SourceError(f"source {redact_url(cfg.uri)}: `live: false` is for files and http(s) URLs, "
                              f"not {scheme}://")
        live = scheme in LIVE_SCHEMES if cfg.live is None else cfg.live
        specs.append(SourceSpec(sid, cfg.uri, live=live, live_by_uri=cfg.live is None, fps=cfg.fps, realtime=cfg.realtime,
                                tracking=cfg.tracking, zones=cfg.zones, lines=cfg.lines))
    return specs
