"""Many streams on Ray: exactly-once across workers, actor kill, node removal, runtime
add/remove, a stalled stream. Real Ray (local and multi-node), real Redis, real video."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from fpnstream.publish.schema import decode_entry
from fpnstream.devtools.synthetic import write_clip
from tests.faults import exactly_once, longest_pause_s, record
from tests.conftest import SMALL_MODEL, free_port, reference_frames, rtsp_server, run_cli, start_run, wait_for

FAST = ["--model", SMALL_MODEL, "--min-size", "64", "--max-size", "128", "--metrics-port", "0"]


def frames_in(client, prefix: str, sid: str) -> list[int]:
    return [decode_entry(f)["frame"] for _, f in client.xrange(f"{prefix}:detections:{{{sid}}}")]


@pytest.fixture(scope="module")
def many_clips(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("many")
    return [write_clip(d / f"s{i:03d}.mp4", frames=3 + i % 4, width=64, height=48, seed=i) for i in range(100)]


@pytest.fixture(scope="module")
def long_clips(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("long")
    return [write_clip(d / f"l{i}.mp4", frames=150, width=96, height=64, seed=i) for i in range(4)]


def test_hundred_streams_two_workers_every_frame_exactly_once(many_clips, redis_proc, small_checkpoint):
    srcs = [a for p in many_clips for a in ("--source", str(p))]
    proc = run_cli("run", *srcs, *FAST, "--weights", str(small_checkpoint), "--num-actors", "2",
                   "--batch-size", "8", "--redis-url", redis_proc.url, "--redis-prefix", "many")
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = redis_proc.client()
    for p in many_clips:
        n = len(reference_frames(p))
        assert frames_in(client, "many", p.stem) == list(range(n)), p.stem
    workers = {client.hget(f"many:status:{{{p.stem}}}", "worker") for p in many_clips}
    assert workers == {b"0", b"1"}  # streams were spread over both workers
    assert json.loads(client.hget("many:workers", "0"))["pid"] != json.loads(client.hget("many:workers", "1"))["pid"]


def test_killed_worker_is_restarted_and_no_frame_lost_or_duplicated(long_clips, redis_proc, small_checkpoint):
    client = redis_proc.client()
    srcs = [a for p in long_clips for a in ("--source", str(p))]
    proc = start_run(*srcs, *FAST, "--weights", str(small_checkpoint), "--num-actors", "2",
                     "--redis-url", redis_proc.url, "--redis-prefix", "kill")
    try:
        wait_for(lambda: client.hlen("kill:workers") == 2 and sum(client.xlen(f"kill:detections:{{{p.stem}}}") for p in long_clips) >= 40,
                 proc, what="first frames")
        victim = json.loads(client.hget("kill:workers", "0"))["pid"]
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "worker 0" in err  # the coordinator noticed
    for p in long_clips:
        record(f"worker SIGKILL ({p.stem})", **exactly_once(frames_in(client, "kill", p.stem), 150),
               longest_pause_s=longest_pause_s(client, f"kill:detections:{{{p.stem}}}"))
    for p in long_clips:
        assert frames_in(client, "kill", p.stem) == list(range(150)), p.stem
    moved = sum(int(client.hget(f"kill:status:{{{p.stem}}}", "moves") or 0) for p in long_clips)
    assert moved >= 1


def test_node_removed_mid_run_streams_move_to_survivor(long_clips, redis_proc, small_checkpoint):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1})
    try:
        node = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        client = redis_proc.client()
        srcs = [a for p in long_clips[:2] for a in ("--source", str(p))]
        proc = start_run(*srcs, *FAST, "--weights", str(small_checkpoint), "--num-actors", "2",
                         "--ray-address", cluster.address, "--redis-url", redis_proc.url, "--redis-prefix", "node")
        try:
            wait_for(lambda: sum(client.xlen(f"node:detections:{{{p.stem}}}") for p in long_clips[:2]) >= 30, proc,
                     timeout=180, what="first frames")
            cluster.remove_node(node)
            _, err = proc.communicate(timeout=300)
        finally:
            proc.kill()
        assert proc.returncode == 0, err[-3000:]
        for p in long_clips[:2]:
            record(f"node removed ({p.stem})", **exactly_once(frames_in(client, "node", p.stem), 150),
                   longest_pause_s=longest_pause_s(client, f"node:detections:{{{p.stem}}}"))
            assert frames_in(client, "node", p.stem) == list(range(150)), p.stem
        assert "is down" in err or "restarted" in err
    finally:
        cluster.shutdown()


def test_streams_added_and_removed_at_runtime(long_clips, many_clips, redis_proc, small_checkpoint, tmp_path):
    client = redis_proc.client()
    ctl = ["--redis-url", redis_proc.url, "--redis-prefix", "rt"]
    proc = start_run("--keep-alive", *FAST, "--weights", str(small_checkpoint), *ctl)
    try:
        # Sent as soon as the job holds the prefix, while its worker may still be loading:
        # commands count from then on (before, one sent before the workers were up was lost).
        wait_for(lambda: client.exists("rt:job"), proc, what="the job took the prefix")
        out = run_cli("streams", *ctl, "add", f"extra={many_clips[3]}")
        assert out.returncode == 0, out.stderr
        n = len(reference_frames(many_clips[3]))
        wait_for(lambda: client.xlen("rt:detections:{extra}") == n, proc, what="added stream published")
        wait_for(lambda: client.hget("rt:status:{extra}", "state") == b"finished", proc, what="finished state")
        # A long one, removed while it runs: it stops early and says so.
        assert run_cli("streams", *ctl, "add", f"long={long_clips[0]}").returncode == 0
        wait_for(lambda: client.xlen("rt:detections:{long}") >= 5, proc, what="long stream started")
        assert run_cli("streams", *ctl, "remove", "long").returncode == 0
        wait_for(lambda: client.hget("rt:status:{long}", "state") == b"stopped", proc, what="stopped state")
        listing = run_cli("streams", *ctl, "list", "--json")
        assert f"fpnstream: job on prefix 'rt': host " in listing.stderr and f"pid {proc.pid}," in listing.stderr
        rows = {r["id"]: r for r in map(json.loads, listing.stdout.splitlines())}
        assert rows["extra"]["state"] == "finished" and rows["long"]["state"] == "stopped"
        assert "owner" not in rows["extra"]
        # Inline passwords are refused on the client side: they would sit in Redis.
        bad = run_cli("streams", *ctl, "add", "cam=rtsp://u:hunter2@127.0.0.1/x")
        assert bad.returncode == 2 and "${VAR}" in bad.stderr and "hunter2" not in bad.stderr
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    frames = frames_in(client, "rt", "long")
    assert 5 <= len(frames) < 150 and frames == list(range(len(frames)))


class StallingTsServer:
    """Serves an MPEG-TS clip over TCP: the first part, then silence with the socket open."""

    def __init__(self, data: bytes, cut: int) -> None:
        self._data, self._cut = data, cut
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self._conns.append(conn)
            try:
                conn.sendall(self._data[: self._cut])
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        for c in self._conns:
            c.close()
        self._sock.close()


CAMERA_FPS = 8


def test_stalled_stream_does_not_slow_the_others(redis_proc, small_checkpoint, tmp_path):
    """On Ray, the path users run: one worker reads a live camera and a source that sends a
    burst and then nothing. The camera keeps its rate and its frames are not held back.

    What is under test is isolation, so the detector has headroom: an 8 fps camera and
    batches of one. A camera frame waits for a lane to free up, then for its own batch; at
    15 fps in 4-frame batches that was two 4-frame passes, and on a 2-core machine shared
    with another test the camera's frames reached 1.3 s while its rate held (CI, stop 20).
    Pinned to half a core here, 4-frame batches gave 0.99-1.04 s, one-frame batches at most
    0.34 s, and at 15 fps the rate itself fell to 9 fps: the bounds measured the machine."""
    port = free_port()
    camera = rtsp_server(port, "160", "120", str(CAMERA_FPS))
    ts = write_clip(tmp_path / "stall.ts", frames=300, width=160, height=120).read_bytes()
    server = StallingTsServer(ts, len(ts) // 3)
    # 10 s after its last byte the read times out, the decoder flushes its last frame and
    # reconnects (a new burst): on a slow machine that fell inside the window. Here the
    # source stays stalled; the watchdog and reconnects have their own test.
    cfg = tmp_path / "no-watchdog.yaml"
    cfg.write_text("decode:\n  stall_timeout_s: 120\n  read_timeout_s: 120\n")
    client = redis_proc.client()
    try:
        proc = start_run("--config", str(cfg), "--source", f"good=rtsp://127.0.0.1:{port}/test", "--source",
                         f"stall=tcp://127.0.0.1:{server.port}", *FAST, "--batch-size", "1", "--weights",
                         str(small_checkpoint), "--redis-url", redis_proc.url, "--redis-prefix", "st")
        try:
            # The stalled stream delivers its first third, then nothing.
            wait_for(lambda: client.xlen("st:detections:{stall}") >= 1, proc, what="stall stream frames")
            wait_for(lambda: client.xlen("st:detections:{good}") >= 10, proc, what="good stream frames")
            time.sleep(1.0)
            n_stall = client.xlen("st:detections:{stall}")
            t0, n0 = time.time(), client.xlen("st:detections:{good}")
            time.sleep(5.0)
            t1, n1 = time.time(), client.xlen("st:detections:{good}")
            assert client.xlen("st:detections:{stall}") == n_stall, "the stall stream should be silent now"
            rate = (n1 - n0) / (t1 - t0)
            assert rate >= 0.6 * CAMERA_FPS, f"healthy stream fell to {rate:.1f} fps while the other stalled"
            # every camera frame published in the window (entry ids are the server's ms clock)
            window = client.xrange("st:detections:{good}", min=str(int(t0 * 1000)), max=str(int(t1 * 1000)))
            latencies = [decode_entry(f)["latency_ms"] for _, f in window]
            assert len(latencies) >= 0.6 * CAMERA_FPS * 4 and max(latencies) < 1000, latencies
            # a Ray actor did the work, not the driver (no --in-process)
            assert json.loads(client.hget("st:workers", "0"))["pid"] != proc.pid
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 0, err[-3000:]
    finally:
        server.close()
        camera.kill()


def test_overload_degrades_live_streams_evenly_and_drops_stale(rtsp_url, redis_proc, small_checkpoint):
    """Three 15 fps cameras into a detector that manages a fraction of that: every stream
    keeps a fair share, old frames are dropped as `stale`, latency stays bounded."""
    client = redis_proc.client()
    srcs = [a for i in range(3) for a in ("--source", f"cam{i}={rtsp_url}")]
    proc = start_run(*srcs, "--model", SMALL_MODEL, "--weights", str(small_checkpoint), "--min-size", "480",
                     "--max-size", "640", "--metrics-port", "0", "--freshness-ms", "500", "--batch-size", "2",
                     "--redis-url", redis_proc.url, "--redis-prefix", "ov")  # on Ray, the path users run
    try:
        wait_for(lambda: all(client.xlen(f"ov:detections:{{cam{i}}}") >= 3 for i in range(3)), proc, what="all cams")
        # Steady state only: the cameras connect one after another, so count from here.
        before = [client.xlen(f"ov:detections:{{cam{i}}}") for i in range(3)]
        time.sleep(8)
        after = [client.xlen(f"ov:detections:{{cam{i}}}") for i in range(3)]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    counts = [a - b for a, b in zip(after, before)]
    assert min(counts) >= 0.5 * max(counts) and min(counts) > 0, counts
    for i in range(3):
        line = next(ln for ln in err.splitlines() if f"stream cam{i}: decoded" in ln)
        assert "stale=" in line or "queue_full=" in line, line  # overload shows up as counted drops
        docs = [decode_entry(f) for _, f in client.xrange(f"ov:detections:{{cam{i}}}")]
        # Frames older than the freshness limit never reach the model; what is published is
        # fresh plus at most a couple of inference times.
        assert max(d["latency_ms"] for d in docs[len(docs) // 2:]) < 5000
    assert any("stale=" in ln for ln in err.splitlines() if "stream cam" in ln)
