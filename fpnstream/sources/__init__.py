"""Video sources: URI parsing (`spec`) and PyAV decoding (`decoder`)."""

from fpnstream.sources.decoder import VideoDecoder
from fpnstream.sources.spec import SourceSpec, parse_source_arg, resolve_sources

__all__ = ["SourceSpec", "VideoDecoder", "parse_source_arg", "resolve_sources"]
