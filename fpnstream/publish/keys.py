"""Every Redis key fpnstream uses, in one place. `prefix` is `redis.prefix` (default
"fpnstream"); see the README's key table.

A stream's own keys carry its id as a Redis Cluster hash tag (`{id}`): on a cluster they all
land in one hash slot, so the publish script can write a stream's entries, events and status
in one atomic call. On a single server the braces are only part of the name. Stream ids
never contain braces (`fpnstream.core.ids.STREAM_ID`), and prefixes neither (config checks).
Keys of the layout before schema 1.1 had no braces: `migrate_legacy_keys` renames them.
"""

from __future__ import annotations

import re

def stream_key(prefix: str, stream_id: str) -> str:
    return f"{prefix}:detections:{{{stream_id}}}"


def events_key(prefix: str, stream_id: str) -> str:
    """Zone and line events of a tracked stream (schema in the README, "Events")."""
    return f"{prefix}:events:{{{stream_id}}}"


def status_key(prefix: str, stream_id: str) -> str:
    """Hash of a stream's state and publish progress (last_frame, published, owner, ...)."""
    return f"{prefix}:status:{{{stream_id}}}"


def preview_key(prefix: str, stream_id: str) -> str:
    """Hash with the newest snapshot of a stream for `fpnstream preview` (see snapshots.py)."""
    return f"{prefix}:preview:{{{stream_id}}}"


def stream_keys_glob(kind_key, prefix: str) -> str:
    """SCAN pattern for every key made by `kind_key` (e.g. `stream_key`) under `prefix`."""
    return kind_key(_glob_escape(prefix), "*")


def stream_id_of(key: str | bytes) -> str | None:
    """The stream id in one of a stream's keys (the hash tag at its end); None if not one."""
    text = key.decode() if isinstance(key, bytes) else key
    m = re.search(r"\{([^{}]+)\}$", text)
    return m.group(1) if m else None


def legacy_key(key: str) -> str:
    """The name the same key had before hash tags: `p:detections:{cam}` -> `p:detections:cam`."""
    head, _, tag = key.rpartition("{")
    return head + tag.rstrip("}")


def control_key(prefix: str) -> str:
    return f"{prefix}:control"


def streams_key(prefix: str) -> str:
    """Set of stream ids the job knows (running or ended), for `streams list`."""
    return f"{prefix}:streams"


def workers_key(prefix: str) -> str:
    """Hash: worker index -> JSON {host, pid, device, ...} of the running job's workers."""
    return f"{prefix}:workers"


def job_key(prefix: str) -> str:
    """String: the running job's lease on the prefix (JSON {token, host, pid, since}), with a
    TTL its holder keeps renewing; see fpnstream.publish.job_lease."""
    return f"{prefix}:job"


def keys_of_stream(prefix: str, stream_id: str) -> list[str]:
    return [make(prefix, stream_id) for make in (stream_key, events_key, status_key, preview_key)]


def _glob_escape(s: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", s)
