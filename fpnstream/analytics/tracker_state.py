"""A tracker's state as plain JSON, and back: how tracks survive a stream moving to another
worker or a restarted job.

The state of a `trackers` tracker is a small object graph: its tracklets, each with a
Kalman filter (numpy arrays) and counters, and the next id to hand out. It is written as
JSON, never pickled: anyone who can write to Redis could otherwise run code in a worker.
On the way back only classes of the `trackers` package listed below are rebuilt (without
calling any of their methods), numbers and arrays become numbers and arrays, and anything
else is refused.
"""

from __future__ import annotations

import base64
import enum
import inspect
import json
import zlib
from typing import Any

import numpy as np

# Attributes of the tracker object itself that hold state (everything else is configuration
# that the job's config rebuilds).
TRACKER_STATE_ATTRS = ("tracks", "_next_track_id", "_last_timestamp")

_MODULES = (
    "trackers.core.bytetrack.tracklet",
    "trackers.core.sort.tracklet",
    "trackers.utils.base_tracklet",
    "trackers.utils.kalman_filter",
    "trackers.utils.motion_models",
    "trackers.utils.state_representations",
)


# Attributes the library writes as results of a Kalman step and never reads back: not saved
# (they would be most of the bytes), refilled on load with what a fresh step would hold.
_KALMAN_OUTPUTS = ("state_prior", "state_covariance_prior", "state_post", "state_covariance_post", "kalman_gain",
                   "innovation", "innovation_cov")


def _refill_kalman_outputs(kf: Any) -> None:
    kf.state_prior, kf.state_post = kf.state.copy(), kf.state.copy()
    kf.state_covariance_prior, kf.state_covariance_post = kf.state_covariance.copy(), kf.state_covariance.copy()
    kf.kalman_gain = np.zeros((kf.dim_x, kf.dim_z))
    kf.innovation = np.zeros((kf.dim_z, 1))
    kf.innovation_cov = np.zeros((kf.dim_z, kf.dim_z))


class StateError(ValueError):
    """A saved tracker state that cannot be read back (corrupt, or from another version)."""


def _allowed() -> dict[str, type]:
    import importlib

    out: dict[str, type] = {}
    for name in _MODULES:
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__.startswith("trackers."):
                out[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return out


_ALLOWED: dict[str, type] | None = None


def _classes() -> dict[str, type]:
    global _ALLOWED
    if _ALLOWED is None:
        _ALLOWED = _allowed()
    return _ALLOWED


def _attrs(obj: Any) -> dict[str, Any]:
    out = dict(getattr(obj, "__dict__", {}))
    for cls in type(obj).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            if hasattr(obj, slot):
                out[slot] = getattr(obj, slot)
    return out


def _to_data(v: Any, pool: dict) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, np.ndarray):
        # Raw bytes, not decimal text (exact, a third of the size), each distinct array once:
        # most of a tracklet's matrices (transition, noise, observation) are the same in all.
        raw = np.ascontiguousarray(v).tobytes()
        key = (raw, v.dtype.str, v.shape)
        if key not in pool:
            pool[key] = len(pool)
        return {"__nd__": pool[key]}
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, enum.Enum):
        return {"__enum__": f"{type(v).__module__}.{type(v).__qualname__}", "name": v.name}
    if isinstance(v, (list, tuple)):
        return {"__seq__": [_to_data(x, pool) for x in v], "tuple": isinstance(v, tuple)}
    if isinstance(v, dict):
        return {"__map__": [[_to_data(k, pool), _to_data(x, pool)] for k, x in v.items()]}
    if isinstance(v, type):
        return {"__type__": f"{v.__module__}.{v.__qualname__}"}
    name = f"{type(v).__module__}.{type(v).__qualname__}"
    if name not in _classes():
        raise StateError(f"cannot save a {name} in a tracker state")
    skip = _KALMAN_OUTPUTS if type(v).__name__ == "KalmanFilter" else ()
    return {"__obj__": name, "attrs": {k: _to_data(x, pool) for k, x in _attrs(v).items() if k not in skip}}


def _cls(name: str) -> type:
    cls = _classes().get(name)
    if cls is None:
        raise StateError(f"tracker state names a class that is not allowed: {name!r}")
    return cls


def _array(item: Any) -> np.ndarray:
    try:
        data, dtype, shape = item
        dtype = np.dtype(dtype)
        if dtype.kind not in "biuf":  # numbers only: no object arrays
            raise StateError(f"tracker state holds a {dtype} array")
        return np.frombuffer(base64.b64decode(data), dtype=dtype).reshape(shape)
    except (ValueError, TypeError) as e:
        raise StateError(f"malformed array in tracker state: {e}") from None


def _from_data(v: Any, pool: list[np.ndarray]) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if not isinstance(v, dict):
        raise StateError("malformed tracker state")
    if "__nd__" in v:
        i = v["__nd__"]
        if not isinstance(i, int) or not 0 <= i < len(pool):
            raise StateError("tracker state refers to an array it does not hold")
        return pool[i].copy()  # each user its own copy, as before saving
    if "__enum__" in v:
        cls = _cls(v["__enum__"])
        if not issubclass(cls, enum.Enum):
            raise StateError(f"{v['__enum__']} is not an enum")
        return cls[v["name"]]
    if "__seq__" in v:
        items = [_from_data(x, pool) for x in v["__seq__"]]
        return tuple(items) if v.get("tuple") else items
    if "__map__" in v:
        return {_from_data(k, pool): _from_data(x, pool) for k, x in v["__map__"]}
    if "__type__" in v:
        return _cls(v["__type__"])
    if "__obj__" in v:
        obj = object.__new__(_cls(v["__obj__"]))  # no __init__, no __setstate__: data only
        for k, x in v["attrs"].items():
            object.__setattr__(obj, str(k), _from_data(x, pool))
        if type(obj).__name__ == "KalmanFilter":
            try:
                _refill_kalman_outputs(obj)
            except (AttributeError, TypeError, ValueError) as e:
                raise StateError(f"malformed Kalman filter in tracker state: {e}") from None
        return obj
    raise StateError("malformed tracker state")


def dump_tracker(tracker: Any) -> Any:
    """The state of a `trackers` tracker, as JSON-ready data."""
    pool: dict = {}
    attrs = {k: _to_data(getattr(tracker, k), pool) for k in TRACKER_STATE_ATTRS}
    arrays = [None] * len(pool)
    for (raw, dtype, shape), i in pool.items():
        arrays[i] = [base64.b64encode(raw).decode(), dtype, list(shape)]
    return {"attrs": attrs, "arrays": arrays}


def load_tracker(tracker: Any, data: Any) -> None:
    """Put a state made by `dump_tracker` into a freshly built tracker of the same kind."""
    if (not isinstance(data, dict) or not isinstance(data.get("attrs"), dict)
            or set(data["attrs"]) != set(TRACKER_STATE_ATTRS) or not isinstance(data.get("arrays"), list)):
        raise StateError("tracker state is not one fpnstream wrote")
    pool = [_array(item) for item in data["arrays"]]
    for k in TRACKER_STATE_ATTRS:
        setattr(tracker, k, _from_data(data["attrs"][k], pool))


def dumps(data: Any) -> bytes:
    """Compact JSON, zlib-compressed: a tracklet's constant matrices repeat across tracks,
    so the saved state is a few hundred bytes per track."""
    return zlib.compress(json.dumps(data, separators=(",", ":")).encode(), 6)


def loads(blob: bytes) -> Any:
    try:
        return json.loads(zlib.decompress(blob, bufsize=1 << 16))
    except (ValueError, TypeError, zlib.error) as e:
        raise StateError(f"tracker state is not compressed JSON: {e}") from None
