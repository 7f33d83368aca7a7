"""Runtime control through Redis: a command stream the running job watches, and the
per-stream status hashes it keeps. Works from any machine that reaches Redis."""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

import redis

from fpnstream.core.errors import ConfigError
from fpnstream.core.redact import query_secrets, redact_url, rtmp_key, userinfo
from fpnstream.publish.connection import is_cluster
from fpnstream.publish.keys import control_key, keys_of_stream, legacy_key, status_key, streams_key

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(uri: str, environ: Mapping[str, str]) -> str:
    """Replace ${NAME} with the job's environment, so passwords never travel through Redis."""

    def sub(m: re.Match) -> str:
        if m.group(1) not in environ:
            raise ConfigError(f"source {redact_url(uri)} refers to ${{{m.group(1)}}}, which is not set")
        return environ[m.group(1)]

    return _ENV_REF.sub(sub, uri)


def send_add(client: redis.Redis, prefix: str, stream_id: str | None, uri: str, fps: float | None,
             analytics: dict[str, Any] | None = None, live: bool | None = None) -> str:
    """`analytics`: the stream's `tracking`, `zones` and `lines` (as in a config file);
    `live`: as `sources[].live` (None: by the URI)."""
    password = (userinfo(uri) or "").partition(":")[2]
    secrets = [password] if password else []
    secrets += query_secrets(uri)  # ?password=, SRT's ?passphrase=, ...
    secrets += [key] if (key := rtmp_key(uri)) else []  # rtmp://host/app/KEY
    if any(not re.fullmatch(rf"(?:{_ENV_REF.pattern})+", secret) for secret in secrets):  # only ${VAR}s travel
        raise ConfigError(
            # No URL-shaped example here: the error line is redacted, and it would be too.
            "refusing to send a password through Redis: write it as ${VAR} in the URI (the password "
            "of its user-info, an RTMP stream key, or a password, passphrase or token of its query) and "
            "set VAR in the job's environment"
        )
    cmd = {"op": "add", "uri": uri}
    if stream_id:
        cmd["id"] = stream_id
    if fps:
        cmd["fps"] = str(fps)
    if live is not None:
        cmd["live"] = "1" if live else "0"
    if analytics:
        cmd["analytics"] = json.dumps(analytics)
    return client.xadd(control_key(prefix), cmd, maxlen=10_000, approximate=True).decode()


def send_remove(client: redis.Redis, prefix: str, stream_id: str) -> str:
    """Ask the job to stop reading `stream_id`; ConfigError for a stream it never wrote a
    status for (a typo would otherwise be sent, and ignored by the job)."""
    if not client.sismember(streams_key(prefix), stream_id):
        raise ConfigError(f"no stream {stream_id!r} under prefix {prefix!r} (`fpnstream streams` lists them)")
    return client.xadd(control_key(prefix), {"op": "remove", "id": stream_id}, maxlen=10_000, approximate=True).decode()


def read_status(client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    rows = []
    # Bytes that are not UTF-8 (written by hand) are shown as U+FFFD rather than failing the listing.
    for sid in sorted(m.decode(errors="replace") for m in client.smembers(streams_key(prefix))):
        # `owner` is a fencing token and `tracks` the binary tracker state: neither is status.
        h = {k.decode(errors="replace"): v.decode(errors="replace")
             for k, v in client.hgetall(status_key(prefix, sid)).items() if k not in (b"owner", b"tracks")}
        rows.append({"id": sid, **h})
    return rows


def control_end(client: redis.Redis, prefix: str) -> bytes | str:
    """The id of the control channel's newest command ("0-0" if none): a job reads those after it."""
    last = client.xrevrange(control_key(prefix), count=1)
    return last[0][0] if last else "0-0"


def write_statuses(client: redis.Redis, prefix: str, rows: Mapping[str, dict[str, Any]]) -> None:
    """Many streams' status hashes in one round trip (the coordinator writes every stream's
    each tick: one round trip per stream was most of a tick with thousands of streams)."""
    if not rows:
        return
    pipe = client.pipeline(transaction=False)
    pipe.sadd(streams_key(prefix), *rows)
    for stream_id, fields in rows.items():
        clean = {k: json.dumps(v) if isinstance(v, dict) else ("" if v is None else str(v)) for k, v in fields.items()}
        pipe.hset(status_key(prefix, stream_id), mapping=clean)
    pipe.execute()


def migrate_legacy_keys(client: redis.Redis, prefix: str) -> int:
    """Rename the keys of known streams from the layout before hash tags (`p:status:cam`)
    to today's (`p:status:{cam}`), so a job upgraded in place resumes its streams and
    consumer groups (kept by RENAME) go on. Returns how many keys were renamed.

    Only on one server: the old layout never ran on a Redis Cluster (its publish script
    touched keys of several slots), and a cluster cannot rename across slots."""
    if is_cluster(client):
        return 0
    new_keys = [k for sid in sorted(m.decode() for m in client.smembers(streams_key(prefix))) for k in keys_of_stream(prefix, sid)]
    if not new_keys:
        return 0
    pipe = client.pipeline(transaction=False)
    for key in new_keys:
        pipe.exists(legacy_key(key))
    old_found = [key for key, n in zip(new_keys, pipe.execute()) if n]
    for key in old_found:
        pipe.renamenx(legacy_key(key), key)  # never over data already in the new layout
    return sum(bool(n) for n in pipe.execute()) if old_found else 0
