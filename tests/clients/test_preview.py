"""`fpnstream preview`: the server in-process against real Redis and snapshots written by the
real PreviewSnapshots writer, then the whole thing in a real headless Chromium on a live run."""

from __future__ import annotations

import http.client
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import redis
from PIL import Image
from redis.backoff import NoBackoff
from redis.retry import Retry

from fpnstream.core.errors import FpnstreamError
from fpnstream.core.frames import BatchResult, Detections, Frame, StageTimes
from fpnstream.core.reports import StreamReport
from fpnstream.clients.preview import PreviewServer
from fpnstream.publish.keys import preview_key
from fpnstream.publish.snapshots import PreviewSnapshots
from tests import procs
from tests.browser import Browser
from tests.conftest import REPO, SMALL_MODEL, RedisProc, run_cli, start_run

PREFIX = "fpnstream"
BOX = (240.0, 120.0, 400.0, 360.0)  # original 640x480 pixels; the snapshot is 320x240 (scale 0.5)


def write_snapshot(client, stream_id: str = "x", index: int = 7, boxes=(BOX,), width: int = 640,
                   height: int = 480, prefix: str = PREFIX) -> None:
    """One snapshot through the real writer, as a job writes it after publishing a frame."""
    frame = Frame(np.full((height, width, 3), 128, np.uint8), stream_id, index, index / 25, time.time() - 0.05)
    dets = Detections(np.array(boxes, np.float32).reshape(-1, 4), np.full(len(boxes), 0.9, np.float32),
                      np.ones(len(boxes), np.int64), ("person",) * len(boxes))
    snaps = PreviewSnapshots(client, prefix, "test-model", fps=1000, max_width=320, quality=90)
    snaps.offer([frame])
    report = StreamReport(stream_id, live=True, state="streaming", fps=12.5, dropped={"stale": 3, "queue_full": 1})
    snaps.write(BatchResult((frame.meta(),), (dets,), StageTimes(0.0, 0.0, 0.0)), {stream_id: report})
    assert client.exists(preview_key(prefix, stream_id))


@pytest.fixture
def server(redis_proc):
    srv = PreviewServer(redis_proc.client(), PREFIX, "127.0.0.1", 0).start()
    yield srv
    srv.close()


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_frame_has_the_detections_drawn_at_snapshot_scale(redis_proc, server):
    client = redis_proc.client()
    write_snapshot(client)
    status, ctype, body = get(server.url + "frame/x.jpg?f=7")
    assert (status, ctype) == (200, "image/jpeg")
    ann, raw = rgb(body), rgb(client.hget(preview_key(PREFIX, "x"), "jpeg"))
    assert ann.shape == raw.shape == (240, 320, 3)
    diff = np.abs(ann - raw).sum(axis=2)
    x1, y1, x2, y2 = (round(v * 0.5) for v in BOX)  # 120, 60, 200, 180
    assert diff[y1 + 20:y2 - 20, x1:x1 + 2].mean() > 60, "the box outline is drawn at the scaled position"
    assert diff[y1 + 20:y2 - 20, x2 - 1:x2 + 1].mean() > 60
    assert diff[y1 + 10:y2 - 10, x1 + 10:x2 - 10].mean() < 10, "the inside of the box is the frame itself"
    assert diff[130:170, 235:245].mean() < 10, "nothing where the unscaled box would be"
    assert diff[200:, :100].mean() < 10
    # Drawn once, then served from the cache for every viewer.
    assert get(server.url + "frame/x.jpg?f=7")[2] == body


def test_zones_and_lines_drawn_with_their_counts(redis_proc, server):
    """A stream with a zone and a line: the real analyzer counts one object crossing; the
    snapshot carries geometry and counts, the frame has them drawn, the stats list them."""
    from fpnstream.analytics.tracking import StreamAnalyzer
    from fpnstream.config.analytics import LineConfig, TrackingConfig, ZoneConfig
    from fpnstream.core.frames import FrameMeta, StreamAnalytics

    analyzer = StreamAnalyzer("z", TrackingConfig(enabled=True, params={"minimum_consecutive_frames": 1}),
                              (ZoneConfig(name="lobby", polygon=((40, 40), (600, 40), (600, 200), (40, 200))),),
                              (LineConfig(name="door", start=(320, 0), end=(320, 480)),))
    for i in range(12):  # one box walking right, across x = 320 (moving right of a downward line is `out`)
        x = 200 + 20 * i
        dets = Detections(np.array([[x, 100, x + 40, 180]], np.float32), np.array([0.9], np.float32),
                          np.ones(1, np.int64), ("person",))
        analyzer.process(FrameMeta("z", i, i / 25, time.time(), 640, 480), dets)
    overlay = analyzer.overlay()
    assert overlay["lines"] == [{"name": "door", "start": [320.0, 0.0], "end": [320.0, 480.0], "in": 0, "out": 1}]
    client = redis_proc.client()
    frame = Frame(np.full((480, 640, 3), 128, np.uint8), "z", 11, 11 / 25, time.time())
    snaps = PreviewSnapshots(client, PREFIX, "test-model", fps=1000, max_width=320, quality=90)
    snaps.offer([frame])
    none = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    snaps.write(BatchResult((frame.meta(),), (none,), StageTimes(0, 0, 0), analytics={"z": StreamAnalytics(b"", (), overlay)}), {})
    time.sleep(0.5)
    stats = json.loads(get(server.url + "api/streams")[2])["streams"][0]
    assert stats["zones"] == {"lobby": 1} and stats["lines"] == {"door": {"in": 0, "out": 1}}
    ann, raw = rgb(get(server.url + "frame/z.jpg?f=11")[2]), rgb(client.hget(preview_key(PREFIX, "z"), "jpeg"))
    diff = np.abs(ann - raw).sum(axis=2)
    assert diff[120:230, 159:162].mean() > 60, "the line, at half scale (x = 160)"
    assert diff[20, 40:300].mean() > 60, "the zone's top edge (y = 20 at half scale)"
    assert diff[150:230, 20:140].mean() < 10, "outside both: the frame itself"
    page = get(server.url)[2].decode()
    assert "fmtCounts" in page and '"zones / lines"' in page


def test_api_page_and_health(redis_proc, server):
    client = redis_proc.client()
    status, ctype, body = get(server.url + "api/streams")
    assert status == 200 and ctype == "application/json"
    assert json.loads(body)["streams"] == [] and json.loads(body)["error"] is None
    write_snapshot(client, "x", 7)
    write_snapshot(client, "cam-2.a", 3, boxes=(BOX, (0, 0, 10, 10)))
    client.hset(preview_key(PREFIX, "bad id!"), mapping={"frame": "1"})  # not a stream id: ignored
    time.sleep(0.5)  # stats are re-read at most once per tick
    doc = json.loads(get(server.url + "api/streams")[2])
    assert doc["error"] is None
    assert [s["id"] for s in doc["streams"]] == ["cam-2.a", "x"]
    s = doc["streams"][1]
    assert {k: s[k] for k in ("frame", "fps", "dropped", "drops", "state", "model", "objects", "classes")} == {
        "frame": 7, "fps": 12.5, "dropped": 4, "drops": {"stale": 3, "queue_full": 1}, "state": "streaming",
        "model": "test-model", "objects": 1, "classes": {"person": 1},
    }
    assert (s["width"], s["height"], s["jpeg_width"], s["jpeg_height"]) == (640, 480, 320, 240)
    assert 0 < s["latency_ms"] < 5000 and 0 <= s["age_s"] < 5
    assert "jpeg" not in s and doc["streams"][0]["objects"] == 2
    status, ctype, page = get(server.url)
    assert status == 200 and ctype.startswith("text/html")
    assert b"new EventSource(\"/events\")" in page and b"textContent" in page and b"innerHTML" not in page
    assert get(server.url + "healthz")[:1] == (200,)
    # An expired snapshot leaves the list.
    client.delete(preview_key(PREFIX, "x"))
    time.sleep(0.5)
    assert [s["id"] for s in json.loads(get(server.url + "api/streams")[2])["streams"]] == ["cam-2.a"]


@pytest.mark.parametrize("path", [
    "frame/nope.jpg", "frame/..%2F..%2Fetc%2Fpasswd.jpg", "frame/%3Cscript%3E.jpg", "frame/.x.jpg",
    "frame/" + "a" * 129 + ".jpg", "frame/x%0A.jpg", "frame/x.png", "mjpeg/nope", "mjpeg/a%20b", "nothing",
])
def test_unknown_or_invalid_ids_are_404(redis_proc, server, path):
    write_snapshot(redis_proc.client(), "x", 1)
    assert get(server.url + path)[0] == 404


def open_stream(server, path: str):
    """A long-lived GET (SSE or MJPEG): the connection and its open response."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", path)
    return conn, conn.getresponse()


def read_event(resp) -> dict:
    while True:
        line = resp.fp.readline()
        assert line, "event stream ended"
        if line.startswith(b"data: "):
            return json.loads(line[len(b"data: "):])


def test_events_deliver_stats_and_new_frames(redis_proc, server):
    client = redis_proc.client()
    write_snapshot(client, "x", 7)
    conn, resp = open_stream(server, "/events")
    assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
    first = read_event(resp)
    assert [(s["id"], s["frame"]) for s in first["streams"]] == [("x", 7)]
    write_snapshot(client, "x", 8)
    write_snapshot(client, "y", 0)  # a stream that appears later
    deadline = time.monotonic() + 5
    while True:
        doc = read_event(resp)
        if [(s["id"], s["frame"]) for s in doc["streams"]] == [("x", 8), ("y", 0)]:
            break
        assert time.monotonic() < deadline, doc
    conn.close()  # a viewer leaves mid-stream: the server goes on quietly


def test_mjpeg_sends_a_part_per_new_frame(redis_proc, server):
    client = redis_proc.client()
    write_snapshot(client, "x", 7)
    conn, resp = open_stream(server, "/mjpeg/x")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "multipart/x-mixed-replace; boundary=fpnstream-frame"

    def part() -> bytes:
        assert resp.fp.readline() == b"--fpnstream-frame\r\n"
        headers = {}
        while (line := resp.fp.readline()) != b"\r\n":
            k, v = line.decode().split(":", 1)
            headers[k.lower()] = v.strip()
        assert headers["content-type"] == "image/jpeg"
        data = resp.fp.read(int(headers["content-length"]))
        assert resp.fp.readline() == b"\r\n"
        return data

    a = part()
    assert rgb(a).shape == (240, 320, 3)
    write_snapshot(client, "x", 8, boxes=((0, 0, 100, 100),))
    b = part()
    assert a != b and b == get(server.url + "frame/x.jpg")[2]
    client.delete(preview_key(PREFIX, "x"))  # expired: the response ends
    assert resp.fp.readline() == b"--fpnstream-frame--\r\n"
    conn.close()


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_redis_outage_is_shown_logged_once_and_survived(tmp_path, redis_proc):
    # redis-py retries a refused connection for seconds by default; this client fails at once.
    client = redis.Redis(port=redis_proc.port, retry=Retry(NoBackoff(), 0))
    server = PreviewServer(client, PREFIX, "127.0.0.1", 0).start()
    lines = Lines()
    logger = logging.getLogger("fpnstream.clients.preview")
    logger.addHandler(lines)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        write_snapshot(redis_proc.client(), "x", 7)
        assert get(server.url + "frame/x.jpg")[0] == 200
        assert [s["id"] for s in json.loads(get(server.url + "api/streams")[2])["streams"]] == ["x"]
        redis_proc.stop()
        for _ in range(3):
            time.sleep(0.5)
            doc = json.loads(get(server.url + "api/streams")[2])
        assert doc["error"].startswith("Redis: ConnectionError") and "\n" not in doc["error"]
        assert [s["id"] for s in doc["streams"]] == ["x"], "the last known stats stay on the page"
        status, _, body = get(server.url + "frame/x.jpg")
        assert status == 503 and body.startswith(b"Redis: ")
        assert get(server.url)[0] == 200 and get(server.url + "healthz")[0] == 200
        warnings = [r for r in lines.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "Traceback" not in warnings[0].getMessage() and "redis://" not in warnings[0].getMessage()

        back = RedisProc(tmp_path, port=redis_proc.port)  # Redis returns (empty: nothing was saved)
        try:
            time.sleep(0.5)
            doc = json.loads(get(server.url + "api/streams")[2])
            assert doc == {"now": doc["now"], "error": None, "streams": []}
            assert any("reads Redis again" in r.getMessage() for r in lines.records)
        finally:
            back.stop()
    finally:
        server.close()
        logger.removeHandler(lines)
        logger.setLevel(old_level)


def test_port_in_use_is_one_clear_line(redis_proc):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(FpnstreamError, match=rf"cannot serve the preview on 127\.0\.0\.1:{port}: .*in use"):
            PreviewServer(redis_proc.client(), PREFIX, "127.0.0.1", port)
        proc = run_cli("preview", "--redis-url", redis_proc.url, "--port", str(port), timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"fpnstream: error: cannot serve the preview on 127.0.0.1:{port}")


class Preview:
    """`fpnstream preview --port 0` as a user starts it; the URL comes from its log line."""

    def __init__(self, *args: str) -> None:
        self.proc = procs.spawn([sys.executable, "-m", "fpnstream", "preview", "--port", "0", *args], cwd=REPO,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self._url: list[str] = []
        self._found = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            m = re.search(r"preview at (http://127\.0\.0\.1:\d+/)", line)
            if m and not self._url:
                self._url.append(m.group(1))
                self._found.set()
        self._found.set()

    def url(self, timeout: float = 30) -> str:
        self._found.wait(timeout)
        if not self._url:
            raise AssertionError("preview did not log its URL:\n" + "".join(self.lines))
        return self._url[0]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode


def test_preview_page_in_chromium_follows_a_live_run(tmp_path, rtsp_url, redis_proc, small_checkpoint):
    cfg = tmp_path / "preview.yaml"
    cfg.write_text("preview:\n  fps: 2\n")
    client = redis_proc.client()
    preview = Preview("--redis-url", redis_proc.url)
    run = browser = None
    card = '[data-stream="cam"]'
    try:
        url = preview.url()
        browser = Browser(1000, 600)
        browser.navigate(url)
        browser.wait_for("document.getElementById('status').dataset.status === 'live'", 10, "the event stream")
        assert browser.evaluate("document.getElementById('empty').hidden") is False
        # The job starts after the page is open: its card appears by itself.
        run = start_run("--config", str(cfg), "--source", f"cam={rtsp_url}", "--model", SMALL_MODEL,
                        "--weights", str(small_checkpoint), "--min-size", "64", "--max-size", "128",
                        "--redis-url", redis_proc.url, "--metrics-port", "0", "--in-process")
        deadline = time.monotonic() + 60
        state_js = (f"(() => {{ const c = document.querySelector('{card}'); const i = c && c.querySelector('img.frame');"
                    " return c && {updates: Number(c.dataset.updates), shown: c.dataset.shown, w: i.naturalWidth,"
                    " src: i.getAttribute('src')}; })()")
        shown: dict[str, int] = {}
        while True:
            if run.poll() is not None:
                raise AssertionError(f"run exited ({run.returncode}):\n{run.stderr.read()[-3000:]}")
            st = browser.evaluate(state_js)
            if st and st["w"] > 0 and st["shown"] is not None:
                assert re.fullmatch(r"/frame/cam\.jpg\?f=\d+&t=[\d.]+", st["src"]), st
                shown.setdefault(st["shown"], st["updates"])
                first = min(shown.values())
                if len(shown) >= 3 and st["updates"] >= first + 2:
                    break
            assert time.monotonic() < deadline, f"the frame did not update: {st}, frames shown {shown}"
            time.sleep(0.1)
        assert browser.evaluate("document.getElementById('empty').hidden") is True
        # The job measures fps over 2 s windows: 0.0 until the first window closes.
        browser.wait_for(f"Number(document.querySelector('{card} [data-stat=fps]').textContent) > 0", 15, "fps > 0")
        stats = browser.evaluate(f"Object.fromEntries([...document.querySelectorAll('{card} [data-stat]')]"
                                 ".map((e) => [e.dataset.stat, e.textContent]))")
        assert re.fullmatch(r"\d+\.\d", stats["fps"]) and float(stats["fps"]) > 0, stats
        assert re.fullmatch(r"\d+ ms", stats["latency"]), stats
        assert re.fullmatch(r"\d+( \(.*\))?", stats["drops"]), stats
        assert re.fullmatch(r"\d+\.\d s", stats["age"]) and stats["frame"].isdigit(), stats
        assert SMALL_MODEL in stats["model"]
        assert browser.evaluate(f"document.querySelector('{card} img.frame').naturalWidth") == 160  # 160x120 source
        assert browser.evaluate(f"document.querySelector('{card}').dataset.state") == "streaming"

        shot = browser.screenshot(REPO / "test-artifacts" / "preview.png")
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        img = np.asarray(Image.open(shot).convert("RGB"))
        assert img.shape == (600, 1000, 3) and img.std() > 10, "a blank screenshot"

        # The job stops and its snapshot expires (deleted here rather than waiting for the TTL).
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=60)
        assert run.returncode == 0, err[-3000:]
        client.delete(preview_key(PREFIX, "cam"))
        browser.wait_for(f"document.querySelector('{card}').dataset.state === 'gone'", 10, "the card marked gone")
    finally:
        if browser is not None:
            browser.close()
        if run is not None and run.poll() is None:
            run.send_signal(signal.SIGINT)
            try:
                run.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                run.kill()
                run.communicate()
        rc = preview.stop()
    log = "".join(preview.lines)
    assert rc == 0, log
    assert "Traceback" not in log and redis_proc.url not in log, log
    assert "preview stopped" in log
