"""Soak: N live RTSP streams for M minutes on a Ray cluster, with the RTSP server killed and
restarted every K seconds. Samples, every S seconds: RSS of every fpnstream / Ray process,
Ray object-store use, frames/s and end-to-end latency from Redis, reconnect counts.

    .venv/bin/python benchmarks/soak.py --streams 4 --minutes 10 --drop-every 60 --out benchmarks/SOAK.md

Needs the test dependencies (GStreamer RTSP server via /usr/bin/python3, redis-server).
Writes a Markdown table and prints it; memory should be flat after warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import ray
import redis

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def processes() -> dict[str, list[int]]:
    """fpnstream driver, its workers, Ray's own daemons: pids by role."""
    roles: dict[str, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "fpnstream run" in cmd or "-m fpnstream run" in cmd:
            role = "driver"
        elif "ray::StreamWorker" in cmd:
            role = "worker"
        elif "raylet" in cmd or "gcs_server" in cmd:
            role = "ray daemons"
        else:
            continue
        roles.setdefault(role, []).append(int(d.name))
    return roles


def start_rtsp(port: int) -> subprocess.Popen:
    p = subprocess.Popen(["/usr/bin/python3", str(REPO / "tests" / "rtsp_server.py"), str(port), "320", "240", "15"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--drop-every", type=float, default=60, help="seconds between RTSP server restarts")
    ap.add_argument("--sample-every", type=float, default=30)
    ap.add_argument("--model", default="fasterrcnn_mobilenet_v3_large_320_fpn")
    ap.add_argument("--out", default="benchmarks/SOAK.md")
    a = ap.parse_args()

    work = Path("/tmp/fpnstream-soak")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    redis_port, rtsp_port = free_port(), free_port()
    redis_proc = subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "", "--dir", str(work)],
                                  stdout=subprocess.DEVNULL)
    # A real multi-process Ray cluster on loopback (`ray start` would advertise the host's
    # external address, which this sandbox does not let us connect to).
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 2})
    rtsp = start_rtsp(rtsp_port)
    r = redis.Redis(port=redis_port)
    cmd = [sys.executable, "-m", "fpnstream", "run", "--model", a.model, "--weights", "none",
           "--ray-address", cluster.address, "--redis-url", f"redis://127.0.0.1:{redis_port}/0",
           "--metrics-port", "0", "--redis-maxlen", "20000"]
    for i in range(a.streams):
        cmd += ["--source", f"cam{i}=rtsp://127.0.0.1:{rtsp_port}/test"]
    run = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(work / "run.log", "w"),
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
    rows = []
    t0 = time.time()
    next_drop = t0 + a.drop_every
    next_sample = t0 + a.sample_every
    last_counts = {i: 0 for i in range(a.streams)}
    last_t = t0
    try:
        while time.time() - t0 < a.minutes * 60:
            time.sleep(1)
            if run.poll() is not None:
                raise SystemExit(f"fpnstream exited early; see {work / 'run.log'}")
            now = time.time()
            if now >= next_drop:
                rtsp.kill()
                rtsp.wait()
                time.sleep(3)
                rtsp = start_rtsp(rtsp_port)
                next_drop = now + a.drop_every
            if now >= next_sample:
                roles = processes()
                res, avail = ray.cluster_resources(), ray.available_resources()
                store_mb = (res.get("object_store_memory", 0) - avail.get("object_store_memory", 0)) / 2**20
                counts, lat = {}, []
                for i in range(a.streams):
                    key = f"fpnstream:detections:{{cam{i}}}"
                    counts[i] = int(r.hget(f"fpnstream:status:{{cam{i}}}", "published") or 0)
                    for _, f in r.xrevrange(key, count=200):
                        if float(f[b"ts"]) >= last_t:
                            lat.append(float(f[b"latency_ms"]))
                fps = sum(counts[i] - last_counts[i] for i in counts) / (now - last_t)
                reconnects = sum(int(r.hget(f"fpnstream:status:{{cam{i}}}", "reconnects") or 0) for i in range(a.streams))
                rows.append({
                    "t_min": round((now - t0) / 60, 1),
                    **{f"rss_{k}_mb": round(sum(rss_mb(p) for p in v), 1) for k, v in sorted(roles.items())},
                    "object_store_mb": round(store_mb, 1),
                    "fps": round(fps, 1),
                    "latency_p50_ms": round(float(np.percentile(lat, 50)), 1) if lat else None,
                    "latency_p95_ms": round(float(np.percentile(lat, 95)), 1) if lat else None,
                    "reconnects": reconnects,
                })
                print(json.dumps(rows[-1]), flush=True)
                last_counts, last_t = counts, now
                next_sample = now + a.sample_every
    finally:
        run.send_signal(signal.SIGTERM)
        try:
            run.wait(60)
        except subprocess.TimeoutExpired:
            run.kill()
        rtsp.kill()
        ray.shutdown()
        cluster.shutdown()
        redis_proc.terminate()
    cols = list(rows[0])
    lines = [f"Soak: {a.streams} RTSP streams (320x240 @ 15 fps), {a.minutes:g} min, RTSP server restarted every "
             f"{a.drop_every:g} s, model {a.model} (random weights), 1 CPU worker on a local Ray cluster (ray.cluster_utils).",
             f"Command: `.venv/bin/python benchmarks/soak.py --streams {a.streams} --minutes {a.minutes:g} "
             f"--drop-every {a.drop_every:g} --sample-every {a.sample_every:g}`", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in cols) + " |" for row in rows]
    warm = rows[min(2, len(rows) - 1)]
    end = rows[-1]
    deltas = {k: round(end[k] - warm[k], 1) for k in cols if k.startswith("rss_") and k in warm}
    lines += ["", f"RSS change from t={warm['t_min']} min to the end: {deltas}"]
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
