"""`fpnstream preview`: a web page with each stream's newest annotated frame and its stats.

One process, stdlib `http.server`; it reads only the snapshot hashes that running jobs write
to Redis (`<prefix>:preview:<stream id>`, see snapshots.py), so it needs no access to the
cameras and may run anywhere that reaches Redis.

Routes:
  /                   the page (inline HTML/CSS/JS; live through server-sent events)
  /events             text/event-stream: every ~0.5 s one `data:` JSON line with all streams' stats
  /api/streams        the same stats as one JSON document
  /frame/<id>.jpg     the newest snapshot with its detections drawn (404 when there is none)
  /mjpeg/<id>         multipart/x-mixed-replace MJPEG of those frames (VLC, ffplay, a browser)
  /healthz            "ok"

Stats are read from Redis at most once per tick, however many pages are open, and each
annotated frame is drawn once, however many viewers ask for it.
"""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import sys
import threading
import time
from pathlib import Path
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import redis

from fpnstream.core.errors import FpnstreamError
from fpnstream.core.ids import STREAM_ID as STREAM_ID_PATTERN
from fpnstream.clients.preview_stats import _STAT_FIELDS, _num, _one_line, _stats, _text
from fpnstream.publish.keys import preview_key, stream_id_of, stream_keys_glob

log = logging.getLogger(__name__)

STREAM_ID = re.compile(f"^{STREAM_ID_PATTERN}$")  # the config's stream id pattern
TICK_S = 0.5
_BOUNDARY = "fpnstream-frame"


class PreviewError(FpnstreamError):
    pass


@dataclass
class _Annotated:
    key: tuple[int, str]  # (frame index, published_ts): a restarted job reuses frame indices
    jpeg: bytes


class PreviewState:
    """Reads the snapshot hashes: stats (shared by all viewers, at most once per tick) and
    annotated frames (drawn once per new snapshot)."""

    def __init__(self, client: redis.Redis, prefix: str, tick_s: float = TICK_S) -> None:
        self._client = client
        self._prefix = prefix
        self._tick = tick_s
        self._lock = threading.Lock()
        self._doc: dict[str, Any] | None = None
        self._doc_at = 0.0
        self._draw_lock = threading.Lock()
        self._frames: dict[str, _Annotated] = {}
        self._failing = False

    # -- errors: shown on the page, logged once per outage --
    def _failed(self, e: Exception) -> str:
        msg = f"Redis: {_one_line(e)}"
        if not self._failing:
            log.warning("preview cannot read Redis (still serving; the page shows the error): %s", msg)
            self._failing = True
        return msg

    def _recovered(self) -> None:
        if self._failing:
            log.info("preview reads Redis again")
            self._failing = False

    def snapshot(self) -> dict[str, Any]:
        """All streams' stats, refreshed from Redis when older than a tick."""
        with self._lock:
            if self._doc is None or time.monotonic() - self._doc_at >= self._tick * 0.9:
                self._doc = self._read()
                self._doc_at = time.monotonic()
            return self._doc

    def _read(self) -> dict[str, Any]:
        now = time.time()
        try:
            keys = sorted({_text(k) for k in self._client.scan_iter(match=stream_keys_glob(preview_key, self._prefix), count=1000)})
            ids = [stream_id_of(k) or "" for k in keys]
            keep = [(k, i) for k, i in zip(keys, ids) if STREAM_ID.fullmatch(i)]
            pipe = self._client.pipeline(transaction=False)
            for key, _ in keep:
                pipe.hmget(key, _STAT_FIELDS)
            rows = pipe.execute() if keep else []
        except redis.RedisError as e:
            old = self._doc or {"streams": []}
            return {"now": now, "error": self._failed(e), "streams": old["streams"]}
        self._recovered()
        streams = []
        for (_, stream_id), values in zip(keep, rows):
            s = _stats(stream_id, dict(zip(_STAT_FIELDS, values)), now)
            if s is not None:  # expired between SCAN and HMGET
                streams.append(s)
        live = {s["id"] for s in streams}
        with self._draw_lock:
            for gone in set(self._frames) - live:
                del self._frames[gone]
        return {"now": now, "error": None, "streams": streams}

    def frame(self, stream_id: str) -> bytes | None:
        """The newest snapshot of `stream_id` as JPEG with its detections drawn; None if none.
        Raises redis.RedisError."""
        key = preview_key(self._prefix, stream_id)
        head = self._client.hmget(key, ("frame", "published_ts"))
        if head[0] is None:
            return None
        ident = (_num(head[0], int), _text(head[1] or ""))
        with self._draw_lock:
            hit = self._frames.get(stream_id)
            if hit is not None and hit.key == ident:
                return hit.jpeg
        raw = self._client.hmget(key, ("frame", "published_ts", "jpeg", "detections", "width", "jpeg_width", "analytics"))
        if raw[0] is None or raw[2] is None:
            return None
        ident = (_num(raw[0], int), _text(raw[1] or ""))
        with self._draw_lock:
            hit = self._frames.get(stream_id)
            if hit is not None and hit.key == ident:  # another viewer drew it meanwhile
                return hit.jpeg
            jpeg = _annotate(raw[2], raw[3], _num(raw[4], int), _num(raw[5], int), raw[6])
            self._frames[stream_id] = _Annotated(ident, jpeg)
            return jpeg


def _annotate(jpeg: bytes, detections: Any, width: int, jpeg_width: int, analytics: Any = None) -> bytes:
    from PIL import Image

    from fpnstream.publish.draw import draw_detections, draw_overlay, to_jpeg

    dets, overlay = _json(detections, []), _json(analytics, {})
    try:
        img = Image.open(io.BytesIO(jpeg))
        img.load()
    except OSError:
        return jpeg  # not decodable: pass the snapshot through as it is
    scale = jpeg_width / width if width > 0 and jpeg_width > 0 else img.width / max(1, width or img.width)
    img = draw_overlay(img, overlay if isinstance(overlay, dict) else {}, scale)  # under the boxes
    return to_jpeg(draw_detections(img, dets if isinstance(dets, list) else [], scale), 85)


def _json(raw: Any, default: Any) -> Any:
    try:
        return json.loads(_text(raw)) if raw else default
    except ValueError:
        return default


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001 (socketserver's signature)
        e = sys.exc_info()[1]
        if isinstance(e, (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout)):
            return  # a viewer went away
        log.warning("preview request failed: %s", _one_line(e) if e else "unknown error")


class _V6Server(_Server):
    address_family = socket.AF_INET6


class PreviewServer:
    """The preview web server; `start()` serves in a background thread until `close()`."""

    def __init__(self, client: redis.Redis, prefix: str, host: str = "127.0.0.1", port: int = 8090,
                 tick_s: float = TICK_S) -> None:
        self.state = PreviewState(client, prefix, tick_s)
        self.tick_s = tick_s
        self.closing = threading.Event()
        cls = _V6Server if ":" in host else _Server
        try:
            self._httpd = cls((host, port), _handler(self))
        except OSError as e:
            raise PreviewError(f"cannot serve the preview on {host}:{port}: {e.strerror or e}") from None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._httpd.server_address[0])
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/"

    def start(self) -> PreviewServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="preview-http", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self.closing.set()  # event streams end within a tick
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> PreviewServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def _handler(server: PreviewServer) -> type[BaseHTTPRequestHandler]:
    state = server.state

    class Handler(BaseHTTPRequestHandler):
        server_version = "fpnstream-preview"
        timeout = 30  # an idle or stuck client does not hold a thread forever

        def log_message(self, *args) -> None:  # one line per image every second: keep logs quiet
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            try:
                self._route(unquote(urlsplit(self.path).path))
            except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout):
                self.close_connection = True  # the viewer closed the page
            except Exception as e:  # a bug or a malformed snapshot: one line, a 500, and serve on
                log.warning("preview %s failed: %s", urlsplit(self.path).path[:200], _one_line(e))
                self.close_connection = True
                try:
                    self._send(500, b"internal error (see the preview's log)\n")
                except OSError:
                    pass

        def _route(self, path: str) -> None:
            if path in ("/", "/index.html"):
                self._send(200, PAGE.encode(), "text/html; charset=utf-8",
                           {"Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                                                       "style-src 'unsafe-inline'; img-src 'self'"})
            elif path == "/events":
                self._events()
            elif path == "/api/streams":
                self._send(200, json.dumps(state.snapshot()).encode(), "application/json")
            elif path == "/healthz":
                self._send(200, b"ok\n")
            elif path.startswith("/frame/") and path.endswith(".jpg"):
                self._frame(path[len("/frame/"):-len(".jpg")])
            elif path.startswith("/mjpeg/"):
                self._mjpeg(path[len("/mjpeg/"):])
            else:
                self._send(404, b"not found: try /, /events, /api/streams, /frame/ID.jpg, /mjpeg/ID or /healthz\n")

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8",
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _frame_or_error(self, stream_id: str) -> bytes | None:
            """The annotated JPEG, or None after answering with an error."""
            if not STREAM_ID.fullmatch(stream_id):
                self._send(404, b"no such stream\n")
                return None
            try:
                jpeg = state.frame(stream_id)
            except redis.RedisError as e:
                self._send(503, (state._failed(e) + "\n").encode())
                return None
            if jpeg is None:
                self._send(404, b"no snapshot of this stream (none yet, or it expired)\n")
            return jpeg

        def _frame(self, stream_id: str) -> None:
            jpeg = self._frame_or_error(stream_id)
            if jpeg is not None:
                self._send(200, jpeg, "image/jpeg")

        def _stream_headers(self, ctype: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True

        def _events(self) -> None:
            self._stream_headers("text/event-stream")
            self.wfile.write(b"retry: 2000\n\n")
            while not server.closing.is_set():
                doc = state.snapshot()
                self.wfile.write(b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n")
                self.wfile.flush()
                server.closing.wait(server.tick_s)

        def _mjpeg(self, stream_id: str) -> None:
            jpeg = self._frame_or_error(stream_id)
            if jpeg is None:
                return
            self._stream_headers(f"multipart/x-mixed-replace; boundary={_BOUNDARY}")
            last = None
            while not server.closing.is_set():
                doc = state.snapshot()
                current = next((s for s in doc["streams"] if s["id"] == stream_id), None)
                if current is None and not doc["error"]:
                    break  # the stream's snapshot expired: end the response
                ident = (current["frame"], current["published_ts"]) if current else last
                if ident != last:
                    try:
                        jpeg = state.frame(stream_id) or jpeg
                    except redis.RedisError:
                        jpeg = None
                    if jpeg is not None:
                        self.wfile.write(f"--{_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}"
                                         f"\r\n\r\n".encode() + jpeg + b"\r\n")
                        self.wfile.flush()
                        last = ident
                server.closing.wait(server.tick_s)
            self.wfile.write(f"--{_BOUNDARY}--\r\n".encode())

    return Handler


def run_preview(client: redis.Redis, prefix: str, host: str, port: int, stop: threading.Event) -> None:
    """Serve the preview until `stop` is set (SIGINT/SIGTERM in the CLI)."""
    server = PreviewServer(client, prefix, host, port).start()
    log.info("preview at %s (streams under prefix %r; Ctrl-C to stop)", server.url, prefix)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.close()
        log.info("preview stopped")


# The page itself (HTML, CSS, inline JS): a static file of its own, read once.
PAGE = (Path(__file__).with_name("preview_page.html")).read_text(encoding="utf-8")
