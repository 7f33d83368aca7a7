"""`fpnstream` as a user runs it: subprocesses, a local Ray, real Redis, real clips."""

import hashlib
import json
import signal
import subprocess
import threading
import time
import urllib.request

import pytest
import redis

from fpnstream.publish.schema import decode_entry
from tests.conftest import (
    PARITY_MAX_SIZE, PARITY_MIN_SIZE, PARITY_MODEL, SMALL_MODEL, free_port, reference_frames, run_cli, start_run,
    wait_for,
)
from tests.parity import match_detections, torchvision_reference


def assert_clean_error(proc: subprocess.CompletedProcess, fragment: str, code: int = 2) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("fpnstream: error: "), proc.stderr
    assert fragment in last, last


def test_run_on_ray_publishes_what_torchvision_returns(clips, firing_checkpoint, redis_proc):
    """The parity test through the real path: decode -> Ray actor -> Redis, vs torchvision direct."""
    clip = clips["mp4_h264"]
    proc = run_cli(
        "run", "--source", f"cam={clip}", "--model", PARITY_MODEL, "--weights", str(firing_checkpoint),
        "--device", "cpu", "--score-threshold", "0.5", "--min-size", str(PARITY_MIN_SIZE),
        "--max-size", str(PARITY_MAX_SIZE), "--batch-size", "4", "--redis-url", redis_proc.url,
        "--redis-prefix", "par", "--metrics-port", "0",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "stream worker(s) ready" in proc.stderr  # it really went through Ray
    ref_frames = reference_frames(clip)
    ref = torchvision_reference(PARITY_MODEL, firing_checkpoint, [rgb for _, _, rgb in ref_frames],
                                box_score_thresh=0.5, min_size=PARITY_MIN_SIZE, max_size=PARITY_MAX_SIZE)
    docs = [decode_entry(f) for _, f in redis_proc.client().xrange("par:detections:{cam}")]
    assert [d["frame"] for d in docs] == list(range(len(ref_frames)))
    matched = unmatched = 0
    for doc, r, (_, pts, rgb) in zip(docs, ref, ref_frames):
        assert doc["pts"] == pytest.approx(pts) and (doc["height"], doc["width"]) == rgb.shape[:2]
        m, u_ours, u_ref = match_detections(doc["detections"], r)
        matched, unmatched = matched + m, unmatched + max(u_ours, u_ref)
    assert matched >= 20 * len(docs), "the checkpoint must fire for parity to mean anything"
    # Batches of 4 vs single frames: a handful of near-tied boxes may move, nothing more.
    assert unmatched <= max(3, 0.01 * matched), (matched, unmatched)


def test_run_on_ray_reads_a_video_file_served_over_http_once_when_told_it_is_not_live(tmp_path, small_checkpoint,
                                                                                       redis_proc):
    """An http(s) URL counts as live (a camera's MJPEG or HLS feed): at its end it is opened
    again, so a video file served over HTTP was read over and over, for ever. `live: false`
    makes it a file: every frame once, then the job ends."""
    from fpnstream.devtools.synthetic import write_clip
    from tests.http_files import HttpFiles

    write_clip(tmp_path / "web" / "v.mp4", frames=30, width=96, height=64, seed=6,
               container_options={"movflags": "+faststart"})
    with HttpFiles(tmp_path / "web") as web:
        cfg = tmp_path / "http.yaml"
        cfg.write_text(f"sources:\n  - id: v\n    uri: {web.url('v.mp4')}\n    live: false\n")
        proc = run_cli("run", "--config", str(cfg), "--model", SMALL_MODEL, "--weights", str(small_checkpoint),
                       "--min-size", "64", "--max-size", "128", "--redis-url", redis_proc.url, "--metrics-port", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stream worker(s) ready" in proc.stderr and "Traceback" not in proc.stderr
    client = redis_proc.client()
    assert [decode_entry(f)["frame"] for _, f in client.xrange("fpnstream:detections:{v}")] == list(range(30))
    assert client.hget("fpnstream:status:{v}", "state") == b"finished"
    assert client.hget("fpnstream:status:{v}", "live") == b"0"


def test_embedded_redis_demo_then_tail_with_live_metrics(tmp_path, clips, small_checkpoint):
    port = free_port()
    scraped: list[str] = []
    done = threading.Event()

    def scrape():
        while not done.is_set():
            try:
                scraped.append(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode())
            except OSError:
                pass
            time.sleep(0.2)

    t = threading.Thread(target=scrape, daemon=True)
    t.start()
    try:
        proc = run_cli("run", "--source", str(clips["webm_vp9"]), "--model", SMALL_MODEL,
                       "--weights", str(small_checkpoint), "--metrics-port", str(port), cwd=tmp_path)
    finally:
        done.set()
        t.join()
    assert proc.returncode == 0, proc.stderr[-3000:]
    n = len(reference_frames(clips["webm_vp9"]))
    assert f"stream c: decoded {n}, published {n}" in proc.stderr
    assert (tmp_path / ".fpnstream" / "redis").is_dir()
    # Metrics were served while the job ran.
    assert any('fpnstream_frames_decoded_total{stream="c",worker="0"}' in s for s in scraped), "metrics endpoint never answered"
    assert any("fpnstream_build_info{" in s and SMALL_MODEL in s for s in scraped)

    # tail, after the run, reads the embedded Redis's data from disk.
    out = run_cli("tail", "--count", "3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [doc["frame"] for doc in lines] == [n - 3, n - 2, n - 1]
    assert all(doc["stream"] == "c" and doc["v"] == "1" for doc in lines)
    assert_clean_error(run_cli("tail", "--stream", "nope", cwd=tmp_path), "no stream 'nope'")


def test_sigterm_drains_and_exits_zero(tmp_path, redis_proc, small_checkpoint):
    from fpnstream.devtools.synthetic import write_clip

    clip = write_clip(tmp_path / "long.mp4", frames=600, width=160, height=120)
    proc = start_run("--source", f"long={clip}", "--model", SMALL_MODEL, "--weights", str(small_checkpoint),
                     "--redis-url", redis_proc.url, "--metrics-port", "0", "--in-process")
    client = redis_proc.client()
    wait_for(lambda: client.xlen("fpnstream:detections:{long}") >= 5, proc, what="first frames")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    frames = [decode_entry(f)["frame"] for _, f in client.xrange("fpnstream:detections:{long}")]
    assert 5 <= len(frames) < 600
    assert frames == list(range(len(frames)))
    line = next(ln for ln in err.splitlines() if "stream long: decoded" in ln)
    decoded = int(line.split("decoded ")[1].split(",")[0])
    assert f"published {len(frames)}," in line
    assert decoded == len(frames) or (decoded == len(frames) + 1 and "stopped=1" in line)


def test_live_rtsp_runs_until_sigint_then_drains(rtsp_url, redis_proc, small_checkpoint):
    proc = start_run("--source", f"cam={rtsp_url}", "--model", SMALL_MODEL, "--weights", str(small_checkpoint),
                     "--redis-url", redis_proc.url, "--metrics-port", "0", "--in-process")
    client = redis_proc.client()
    wait_for(lambda: client.xlen("fpnstream:detections:{cam}") >= 10, proc, what="first frames")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    docs = [decode_entry(f) for _, f in client.xrange("fpnstream:detections:{cam}")]
    frames = [d["frame"] for d in docs]
    assert frames == sorted(frames) and len(set(frames)) == len(frames)
    report = next(line for line in err.splitlines() if "stream cam: decoded" in line)
    published = int(report.split("published ")[1].split(",")[0])
    assert published == len(docs)
    assert all(d["latency_ms"] < 30_000 for d in docs)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--source", "/no/such/video.mp4"], "file not found: /no/such/video.mp4"),
        (["--source", "README.md"], "not a readable video"),
        (["--source", "ftp://u:topsecret@h/v.mp4"], "unsupported source scheme 'ftp'"),
        (["--model", "yolo", "--source", "x.mp4"], "unknown model 'yolo'"),
        (["--score-threshold", "7", "--source", "x.mp4"], "model.score_threshold"),
        (["--redis-url", "http://h:1", "--source", "x.mp4"], "must start with redis://"),
        (["--fps", "5"], "--fps applies to --source"),
        ([], "no sources"),
        (["--source", ""], "invalid source: uri"),
        (["--source", "x.mp4", "--redis-url", "redis:/:topsecret@127.0.0.1:6379"], "must start with redis://"),
        (["--source", "rtsp://admin:${FPNSTREAM_TEST_UNSET}@127.0.0.1:1/x"],
         "source rtsp://***@127.0.0.1:1/x refers to ${FPNSTREAM_TEST_UNSET}, which is not set"),
        # A password with a space was redacted only up to it, in every log line and status hash.
        (["--source", "rtsp://adm:top secret@127.0.0.1:1/x"], "a URL may not hold spaces"),
        (["--source", "x.mp4", "--redis-url", "redis://:top secret@127.0.0.1:1/0"], "may not hold spaces"),
        (["--source", "rtsp://user:topsecret@[::1:1/x"], "not a valid URL: Invalid IPv6 URL"),
    ],
)
def test_bad_input_one_clear_line(args, fragment):
    proc = run_cli("run", "--metrics-port", "0", *args)
    assert_clean_error(proc, fragment)
    assert "topsecret" not in proc.stderr


def test_tail_and_annotate_refuse_bad_names_and_redis_urls_in_one_line():
    proc = run_cli("tail", "--redis-url", "redis://:topsecret@127.0.0.1:6379/0?foo=bar")
    assert_clean_error(proc, "an unknown option in its query", code=2)
    assert "topsecret" not in proc.stderr
    for args in (["tail", "--stream", "\udcff\udcfe"], ["tail", "--group", "\udcff"],
                 ["annotate", "--stream", "a/b", "--source", "x.mp4", "--out", "o.mp4"]):
        proc = run_cli(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith(f"fpnstream {args[0]}: error: argument"), proc.stderr


def test_unreachable_services_and_secrets(clips):
    port = free_port()
    proc = run_cli("run", "--source", str(clips["mp4_h264"]), "--metrics-port", "0",
                   "--redis-url", f"redis://:pa55word@127.0.0.1:{port}/0")
    assert_clean_error(proc, f"cannot reach Redis at redis://***@127.0.0.1:{port}/0")
    assert "pa55word" not in proc.stderr
    proc = run_cli("run", "--source", f"cam=rtsp://admin:pa55word@127.0.0.1:{free_port()}/x", "--metrics-port", "0")
    assert_clean_error(proc, "source cam: cannot open rtsp://***@127.0.0.1")
    assert "pa55word" not in proc.stderr
    # Typed raw, as camera pages take them: a "/" in the password ended the user-info before.
    proc = run_cli("run", "--source", f"rtsp://admin:pa55/word@127.0.0.1:{free_port()}/x", "--metrics-port", "0")
    assert_clean_error(proc, "source 127.0.0.1-x: cannot open rtsp://***@127.0.0.1")
    assert "pa55" not in proc.stderr and "admin" not in proc.stderr
    # An RTMP stream key is the stream's credential: neither the error nor the stream id
    # it names holds it (the id takes a digest, so two keys of one application differ).
    port = free_port()
    proc = run_cli("run", "--source", f"rtmp://127.0.0.1:{port}/live/pa55word-key", "--metrics-port", "0")
    assert_clean_error(proc, f"source 127.0.0.1-live_k{hashlib.sha256(b'pa55word-key').hexdigest()[:10]}: cannot open "
                             f"rtmp://127.0.0.1:{port}/live/***")
    assert "pa55word" not in proc.stderr
    for url in ["redis://:pa55word@[::1:6379/0", "unix:///tmp/fpnstream-none.sock?password=pa55word"]:
        proc = run_cli("run", "--source", str(clips["mp4_h264"]), "--metrics-port", "0", "--redis-url", url)
        assert_clean_error(proc, "Redis")
        assert "pa55word" not in proc.stderr, url


def test_wrong_redis_password(tmp_path, clips):
    from tests.conftest import RedisProc

    server = RedisProc(tmp_path, "--requirepass", "correct-horse")
    try:
        proc = run_cli("run", "--source", str(clips["mp4_h264"]), "--metrics-port", "0",
                       "--redis-url", f"redis://:battery-staple@127.0.0.1:{server.port}/0")
        assert_clean_error(proc, "rejected the credentials")
        assert "battery-staple" not in proc.stderr
    finally:
        server.stop()


def test_malformed_and_unknown_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n  - uri: [oops\n")
    assert_clean_error(run_cli("run", "--config", str(bad)), "malformed YAML")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("modle:\n  name: fasterrcnn_resnet50_fpn\n")
    assert_clean_error(run_cli("run", "--config", str(unknown)), "modle: unknown key")


def test_checkpoint_mismatch_reported_from_the_ray_actor(clips, small_checkpoint, redis_proc):
    proc = run_cli("run", "--source", str(clips["mp4_h264"]), "--model", "fasterrcnn_resnet50_fpn",
                   "--weights", str(small_checkpoint), "--redis-url", redis_proc.url, "--metrics-port", "0")
    assert_clean_error(proc, "does not match fasterrcnn_resnet50_fpn")
    assert redis_proc.client().xlen("fpnstream:detections:{a}") == 0


def test_synth_writes_a_decodable_clip(tmp_path):
    proc = run_cli("synth", str(tmp_path / "s.mkv"), "--frames", "7", "--size", "96x64")
    assert proc.returncode == 0, proc.stderr
    frames = reference_frames(tmp_path / "s.mkv")
    assert len(frames) == 7 and frames[0][2].shape == (64, 96, 3)
    assert_clean_error(run_cli("synth", str(tmp_path / "x.mp4"), "--size", "big"), "--size must look like")
    assert_clean_error(run_cli("synth", str(tmp_path / "x.mp4"), "--size", "17x17"), "width and height must be even")
    for size in ("６４x４８", "1_000x64", "64x48x2"):  # full-width digits, underscores: not sizes
        assert_clean_error(run_cli("synth", str(tmp_path / "x.mp4"), "--size", size), "--size must look like")
    assert_clean_error(run_cli("bench", "--size", "9000x9000"), "each side must be within 1..8192")
    # a typo's extra zeros fail at once instead of writing clips until the disk is full
    assert_clean_error(run_cli("synth", str(tmp_path / "x.mp4"), "--frames", "30000000"), "frames within 1..100000")
    assert_clean_error(run_cli("synth", str(tmp_path / "x.mp4"), "--fps", "100000"), "fps within 1..1000")
    for flag, most in (("--frames", 100_000), ("--clips", 256), ("--batch-size", 256)):
        assert_clean_error(run_cli("bench", flag, str(most + 1), "--out", str(tmp_path / "b")), f"bench: {flag} must be within 1..{most}")
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--zone", "door:0,0;10,0"], "polygon"),  # two points are not a zone
        (["--zone", "door:0,0;10,0;oops"], "point 'oops' is not x,y"),
        (["--line", "gate:0,0;0,0"], "start and end are the same point"),
        (["--line", "a b:0,0;5,5"], "name"),
        (["--zone", "z:nan,0;10,0;10,10"], "point 'nan,0' is not finite"),
        (["--fps", "nan"], "--fps must be within 0..1000"),
        (["--fps", "1e9"], "--fps must be within 0..1000"),
    ],
)
def test_streams_add_rejects_bad_zones_and_lines_in_one_line(redis_proc, extra, fragment):
    proc = run_cli("streams", "--redis-url", redis_proc.url, "add", "cam=rtsp://h/x", *extra)
    assert_clean_error(proc, fragment)
    assert redis_proc.client().xlen("fpnstream:control") == 0  # nothing half-sent


def test_streams_add_refuses_what_the_job_would_refuse_before_sending_it(redis_proc):
    """An unsupported scheme failed only in the job's log; an RTMP stream key in the clear
    would sit in the control stream like a password."""
    redis_proc.client().set("fpnstream:job", "{}", px=60_000)  # as a running job's lease
    for uri, fragment in [("ftp://bob:pw123@h/v.mp4", "unsupported source scheme 'ftp' in ftp://***@h/v.mp4"),
                          ("rtmp://h/live/pw123-key", "refusing to send a password through Redis")]:
        proc = run_cli("streams", "--redis-url", redis_proc.url, "add", uri)
        assert_clean_error(proc, fragment)
        assert "pw123" not in proc.stderr
    assert redis_proc.client().xlen("fpnstream:control") == 0


def test_streams_add_and_remove_without_a_job_on_the_prefix_are_refused(redis_proc):
    """Nothing would read them: the job reads only commands sent after it took the prefix."""
    for args in (["add", "cam=rtsp://h/x"], ["remove", "cam"]):
        proc = run_cli("streams", "--redis-url", redis_proc.url, *args)
        assert_clean_error(proc, "no fpnstream job is running on Redis prefix 'fpnstream', so nothing would read")
    assert redis_proc.client().xlen("fpnstream:control") == 0
    listing = run_cli("streams", "--redis-url", redis_proc.url, "list")
    assert listing.returncode == 0 and "no job running on prefix 'fpnstream'" in listing.stderr


def test_streams_add_sends_zones_lines_and_tracking_as_data(redis_proc):
    redis_proc.client().set("fpnstream:job", "{}", px=60_000)  # as a running job's lease
    proc = run_cli("streams", "--redis-url", redis_proc.url, "add", "cam=rtsp://h/x", "--track",
                   "--zone", "lobby:0,0;100,0;100,50", "--line", "door:0,20;100,20")
    assert proc.returncode == 0, proc.stderr
    ((_, cmd),) = redis_proc.client().xrange("fpnstream:control")
    analytics = json.loads(cmd[b"analytics"])
    assert analytics == {"tracking": {"enabled": True},
                         "zones": [{"name": "lobby", "polygon": [[0.0, 0.0], [100.0, 0.0], [100.0, 50.0]]}],
                         "lines": [{"name": "door", "start": [0.0, 20.0], "end": [100.0, 20.0]}]}
