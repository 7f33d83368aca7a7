"""Every Redis key fpnstream uses, in one place. `prefix` is `redis.prefix` (default
"fpnstream"); see the README's key table."""

from __future__ import annotations


def stream_key(prefix: str, stream_id: str) -> str:
    return f"{prefix}:detections:{stream_id}"


def events_key(prefix: str, stream_id: str) -> str:
    """Zone and line events of a tracked stream (schema in the README, "Events")."""
    return f"{prefix}:events:{stream_id}"


def status_key(prefix: str, stream_id: str) -> str:
    """Hash of a stream's state and publish progress (last_frame, published, owner, ...)."""
    return f"{prefix}:status:{stream_id}"


def preview_key(prefix: str, stream_id: str) -> str:
    """Hash with the newest snapshot of a stream for `fpnstream preview` (see snapshots.py)."""
    return f"{prefix}:preview:{stream_id}"


def control_key(prefix: str) -> str:
    return f"{prefix}:control"


def streams_key(prefix: str) -> str:
    """Set of stream ids the job knows (running or ended), for `streams list`."""
    return f"{prefix}:streams"


def workers_key(prefix: str) -> str:
    """Hash: worker index -> JSON {host, pid, device, ...} of the running job's workers."""
    return f"{prefix}:workers"
