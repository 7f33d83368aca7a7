"""Faults: an RTSP server killed and restarted, a server that never sends, a stream that
stalls with its socket open, wrong credentials. Real GStreamer RTSP server, real Redis."""

from __future__ import annotations

import json
import signal
import subprocess
import time

from fpnstream.publish.schema import decode_entry
from tests.faults import longest_pause_s, record
from tests.conftest import SMALL_MODEL, free_port, rtsp_server, run_cli, start_run, wait_for
from tests.cluster.test_cluster import StallingTsServer

FAST = ["--model", SMALL_MODEL, "--min-size", "64", "--max-size", "128", "--metrics-port", "0"]


def quick_reconnect_config(tmp_path, **decode) -> str:
    cfg = tmp_path / "fast.yaml"
    lines = ["decode:", "  reconnect_base_s: 0.2", "  reconnect_max_s: 1.0", "  open_timeout_s: 3",
             "  read_timeout_s: 3", "  stall_timeout_s: 3"]
    lines += [f"  {k}: {v}" for k, v in decode.items()]
    cfg.write_text("\n".join(lines) + "\n")
    return str(cfg)


def docs(client, key):
    return [decode_entry(f) for _, f in client.xrange(key)]


def test_rtsp_server_killed_and_restarted_stream_resumes(tmp_path, redis_proc, small_checkpoint):
    port = free_port()
    server = rtsp_server(port)
    client = redis_proc.client()
    # On Ray, the path users run: the worker's decoder reconnects, the driver is not involved.
    proc = start_run("--config", quick_reconnect_config(tmp_path), "--source", f"cam=rtsp://127.0.0.1:{port}/test",
                     *FAST, "--weights", str(small_checkpoint), "--redis-url", redis_proc.url)
    try:
        wait_for(lambda: client.xlen("fpnstream:detections:{cam}") >= 10, proc, what="first frames")
        server.kill()
        server.wait()
        time.sleep(3)
        before = client.xlen("fpnstream:detections:{cam}")
        server = rtsp_server(port)  # same port, a new server process
        wait_for(lambda: client.xlen("fpnstream:detections:{cam}") >= before + 10, proc, timeout=60, what="resumed frames")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        server.kill()
    assert proc.returncode == 0, err[-3000:]
    entries = docs(client, "fpnstream:detections:{cam}")
    frames = [d["frame"] for d in entries]
    record("RTSP server killed, restarted 3 s later (live, Ray)", published=len(frames),
           duplicated=len(frames) - len(set(frames)), gap_frames=sum(1 for d in entries if d["gap"]),
           longest_pause_s=longest_pause_s(client, "fpnstream:detections:{cam}"))
    assert frames == sorted(set(frames)), "indices go on monotonically, no duplicates"
    gaps = [d for d in entries if d["gap"]]
    assert gaps and gaps[0]["frame"] >= before - 5, "the reconnect is marked on the first frame after it"
    line = next(ln for ln in err.splitlines() if "stream cam: decoded" in ln)
    assert "reconnects " in line and "reconnecting in" in err
    assert "Traceback" not in err


def test_stall_with_open_socket_trips_the_watchdog_and_reconnects(tmp_path, redis_proc, small_checkpoint):
    from fpnstream.devtools.synthetic import write_clip

    ts = write_clip(tmp_path / "s.ts", frames=90, width=96, height=64).read_bytes()
    server = StallingTsServer(ts, len(ts) // 2)  # half the clip, then silence on an open socket
    client = redis_proc.client()
    proc = start_run("--config", quick_reconnect_config(tmp_path), "--source", f"st=tcp://127.0.0.1:{server.port}",
                     *FAST, "--weights", str(small_checkpoint), "--redis-url", redis_proc.url)  # on Ray
    try:
        wait_for(lambda: any(d["gap"] for d in docs(client, "fpnstream:detections:{st}")), proc, timeout=60,
                 what="frames after the watchdog reconnected")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        server.close()
    assert proc.returncode == 0, err[-3000:]
    frames = [d["frame"] for d in docs(client, "fpnstream:detections:{st}")]
    assert frames == sorted(set(frames))
    assert "reconnecting in" in err


def test_silent_server_and_wrong_credentials_back_off_without_crashing(tmp_path, redis_proc, small_checkpoint):
    """On a Ray run: a camera that never sends and one with a wrong password are added at
    runtime; both back off with a clear error, the good camera keeps going, no secret leaks."""
    port, auth_port = free_port(), free_port()
    open_srv = rtsp_server(port)
    auth_srv = rtsp_server(auth_port, "160", "120", "15", "alice", "right-pw")
    client = redis_proc.client()
    ctl = ["--redis-url", redis_proc.url, "--redis-prefix", "flt"]
    proc = start_run("--config", quick_reconnect_config(tmp_path), "--source", f"good=rtsp://127.0.0.1:{port}/test",
                     *FAST, "--weights", str(small_checkpoint), *ctl, env={"CAM_PASS": "wrong-pw"})
    try:
        wait_for(lambda: client.xlen("flt:detections:{good}") >= 5, proc, what="good camera")
        assert run_cli("streams", *ctl, "add", f"silent=rtsp://127.0.0.1:{port}/silent").returncode == 0
        assert run_cli("streams", *ctl, "add", "locked=rtsp://alice:${CAM_PASS}@127.0.0.1:" + f"{auth_port}/test").returncode == 0

        def status(sid):
            return {k.decode(): v.decode() for k, v in client.hgetall(f"flt:status:{{{sid}}}").items()}

        wait_for(lambda: int(status("silent").get("reconnects") or 0) >= 1 and int(status("locked").get("reconnects") or 0) >= 1,
                 proc, timeout=90, what="both bad cameras backing off")
        assert "no video from" in status("silent")["error"]
        locked = status("locked")
        assert "authorization failed" in locked["error"]
        assert "wrong-pw" not in str(locked) and "***@" in locked["uri"]
        n = client.xlen("flt:detections:{good}")
        wait_for(lambda: client.xlen("flt:detections:{good}") >= n + 10, proc, what="good camera unaffected")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
        open_srv.kill()
        auth_srv.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "wrong-pw" not in err and "Traceback" not in err
    assert client.xlen("flt:detections:{silent}") == 0 and client.xlen("flt:detections:{locked}") == 0


def test_wrong_credentials_at_startup_one_clear_line(redis_proc):
    port = free_port()
    srv = rtsp_server(port, "160", "120", "15", "alice", "right-pw")
    try:
        proc = run_cli("run", "--source", f"cam=rtsp://alice:nope-pw@127.0.0.1:{port}/test", "--metrics-port", "0",
                       "--redis-url", redis_proc.url)
    finally:
        srv.kill()
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"fpnstream: error: source cam: authorization failed for rtsp://***@127.0.0.1:{port}/test (wrong or missing credentials)")
    assert "nope-pw" not in proc.stderr


def make_tls_certs(d):
    """A throwaway CA and a server certificate for 127.0.0.1, made with openssl."""
    def ssl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=fpnstream-test-ca")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    return d / "ca.crt", d / "server.crt", d / "server.key"


def test_rediss_with_password(tmp_path, clips, small_checkpoint):
    from tests.conftest import RedisProc

    ca, crt, key = make_tls_certs(tmp_path)
    tls_port = free_port()
    server = RedisProc(tmp_path, "--tls-port", str(tls_port), "--tls-cert-file", str(crt), "--tls-key-file", str(key),
                       "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no", "--requirepass", "tls-s3cret")
    url = f"rediss://:tls-s3cret@127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}"
    try:
        proc = run_cli("run", "--source", f"t={clips['mp4_h264']}", *FAST, "--weights", str(small_checkpoint),
                       "--redis-url", url, "--in-process", "--log-level", "DEBUG")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "tls-s3cret" not in proc.stderr and "rediss://***@127.0.0.1" in proc.stderr
        tail = run_cli("tail", "--redis-url", url, "--stream", "t", "--count", "2")
        assert tail.returncode == 0, tail.stderr
        assert [json.loads(ln)["frame"] for ln in tail.stdout.splitlines()] == [22, 23]
        # Plain TCP to the TLS port, and the right TLS port with a wrong password: clear errors.
        bad = run_cli("tail", "--redis-url", f"redis://:tls-s3cret@127.0.0.1:{tls_port}/0")
        assert bad.returncode == 2 and "tls-s3cret" not in bad.stderr
        wrong = run_cli("tail", "--redis-url", url.replace("tls-s3cret", "nope"))
        assert wrong.returncode == 2 and "rejected the credentials" in wrong.stderr and "nope" not in wrong.stderr
    finally:
        server.stop()


def test_secrets_stay_out_of_logs_labels_ids_and_redis(tmp_path, redis_proc, small_checkpoint):
    """A password-protected camera (inline password) and one via ${VAR}: after a Ray run at
    DEBUG level, no password in stderr, stream ids, metric labels, or any Redis key or value."""
    import urllib.request

    port = free_port()
    srv = rtsp_server(port, "160", "120", "15", "alice", "Sup3r-Secret")
    metrics_port = free_port()
    client = redis_proc.client()
    scraped = []
    proc = start_run("--source", f"rtsp://alice:Sup3r-Secret@127.0.0.1:{port}/test",
                     "--source", "viaenv=rtsp://alice:${CAM_PASS}@127.0.0.1:" + f"{port}/test",
                     "--model", SMALL_MODEL, "--min-size", "64", "--max-size", "128", "--weights", str(small_checkpoint),
                     "--metrics-port", str(metrics_port), "--redis-url", redis_proc.url, "--log-level", "DEBUG",
                     env={"CAM_PASS": "Sup3r-Secret"})
    try:
        wait_for(lambda: client.xlen("fpnstream:detections:{127.0.0.1-test}") >= 5 and client.xlen("fpnstream:detections:{viaenv}") >= 5,
                 proc, what="both cameras")
        time.sleep(1)
        scraped.append(urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode())
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
        srv.kill()
    assert proc.returncode == 0, err[-3000:]
    assert 'stream="127.0.0.1-test"' in scraped[0]
    everything = [err, *scraped]
    for key in client.scan_iter():
        everything.append(key.decode())
        kind = client.type(key).decode()
        if kind == "stream":
            everything += [repr(f) for _, f in client.xrange(key)]
        elif kind == "hash":
            everything.append(repr(client.hgetall(key)))
        elif kind == "set":
            everything.append(repr(client.smembers(key)))
    blob = "\n".join(everything)
    assert "Sup3r-Secret" not in blob
    assert "rtsp://***@127.0.0.1" in blob  # the redacted form is what shows up
