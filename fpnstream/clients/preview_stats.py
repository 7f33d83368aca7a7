"""The preview's reading of snapshot hashes: typed stats per stream, from raw Redis fields."""

from __future__ import annotations

import json
from typing import Any

from fpnstream.core.redact import redact_text

_STAT_FIELDS = ("frame", "ts", "published_ts", "width", "height", "jpeg_width", "jpeg_height", "latency_ms", "fps",
                "dropped", "drops", "state", "model", "detections", "analytics")


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else str(v)


def _num(v: Any, kind=float, default=0):
    try:
        return kind(_text(v)) if v is not None and _text(v) != "" else default
    except ValueError:
        return default


def _one_line(e: BaseException) -> str:
    msg = redact_text(str(e)).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg and msg[0] else type(e).__name__


def _stats(stream_id: str, f: dict[str, Any], now: float) -> dict[str, Any] | None:
    """The JSON stats of one stream from its raw hash fields (no JPEG)."""
    if f.get("frame") is None:
        return None
    try:
        dets = json.loads(_text(f.get("detections") or "[]"))
    except ValueError:
        dets = []
    try:
        drops = {str(k): int(v) for k, v in json.loads(_text(f.get("drops") or "{}")).items()}
    except (ValueError, TypeError, AttributeError):
        drops = {}
    classes: dict[str, int] = {}
    for d in dets if isinstance(dets, list) else []:
        name = str(d.get("name") or d.get("label", "?")) if isinstance(d, dict) else "?"
        classes[name] = classes.get(name, 0) + 1
    published = _num(f.get("published_ts"))
    return {
        "id": stream_id,
        "frame": _num(f.get("frame"), int),
        "ts": _num(f.get("ts")),
        "published_ts": published,
        "age_s": round(max(0.0, now - published), 3) if published else None,
        "latency_ms": _num(f.get("latency_ms")),
        "fps": _num(f.get("fps")),
        "dropped": _num(f.get("dropped"), int),
        "drops": drops,
        "state": _text(f.get("state") or ""),
        "model": _text(f.get("model") or ""),
        "width": _num(f.get("width"), int),
        "height": _num(f.get("height"), int),
        "jpeg_width": _num(f.get("jpeg_width"), int),
        "jpeg_height": _num(f.get("jpeg_height"), int),
        "objects": sum(classes.values()),
        "classes": classes,
        **_counts(f.get("analytics")),
    }


def _counts(raw: Any) -> dict[str, Any]:
    """A stream's zone occupancy and line crossings so far: {"zones": {name: inside},
    "lines": {name: {"in": n, "out": n}}}; empty for a stream without zones or lines."""
    try:
        doc = json.loads(_text(raw)) if raw else {}
        return {"zones": {str(z["name"]): int(z["inside"]) for z in doc.get("zones", [])},
                "lines": {str(ln["name"]): {"in": int(ln["in"]), "out": int(ln["out"])} for ln in doc.get("lines", [])}}
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}
