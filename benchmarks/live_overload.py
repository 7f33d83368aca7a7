"""Live overload: three 30 fps RTSP cameras into one CPU worker on Ray, more than it can
detect. Reports each camera's published frames (fairness), capture -> publish latency
(p50/p95/p99, from the entries' latency_ms, published before the stop; the drain after
SIGTERM is counted apart) against the mean batch time (from the run's
`fpnstream_stage_seconds{stage="inference"}`), and drops by reason.

    .venv/bin/python benchmarks/live_overload.py [--seconds 72] [--out benchmarks/out/live_overload.json]

Needs GStreamer's RTSP server (scripts/system-deps.sh) and redis-server. Seeded firing
mobilenet-320 weights (no trained weights offline); the model's cost is what matters here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fpnstream.devtools.synthetic import synthetic_frame  # noqa: E402
from fpnstream.devtools.testing import make_firing_model, save_checkpoint  # noqa: E402
from fpnstream.publish.keys import status_key, stream_key  # noqa: E402
from fpnstream.publish.schema import decode_entry  # noqa: E402
from tests.conftest import SMALL_MODEL, free_port  # noqa: E402

CAMS = ("c0", "c1", "c2")
SKIP_FIRST = 10  # per camera: the first entries include start-up


def inference_seconds(port: int) -> tuple[float, float]:
    """(sum, count) of the inference stage histogram, over every worker."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    total = count = 0.0
    for line in text.splitlines():
        m = re.match(r'fpnstream_stage_seconds_(sum|count)\{(.*)\} (\S+)', line)
        if m and 'stage="inference"' in m.group(2):
            if m.group(1) == "sum":
                total += float(m.group(3))
            else:
                count += float(m.group(3))
    return total, count


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=72)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "live_overload.json"))
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="overload-"))
    weights = save_checkpoint(make_firing_model(SMALL_MODEL, [synthetic_frame(i, 160, 120) for i in (0, 7)], seed=2),
                              tmp / "w.pth")
    rtsp_port, redis_port, metrics_port = free_port(), free_port(), free_port()
    rtsp = subprocess.Popen(["/usr/bin/python3", str(REPO / "tests" / "rtsp_server.py"), str(rtsp_port), "640", "360", "30"],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    server = subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        assert rtsp.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        url = f"redis://127.0.0.1:{redis_port}/0"
        srcs = [x for c in CAMS for x in ("--source", f"{c}=rtsp://127.0.0.1:{rtsp_port}/test")]
        run = subprocess.Popen([str(REPO / ".venv" / "bin" / "fpnstream"), "run", *srcs, "--model", SMALL_MODEL,
                                "--weights", str(weights), "--redis-url", url, "--metrics-port", str(metrics_port),
                                "--restart"], stderr=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis(port=redis_port)
        deadline = time.monotonic() + 180
        while not all(client.exists(stream_key("fpnstream", c)) for c in CAMS):
            assert time.monotonic() < deadline and run.poll() is None, "the run did not start publishing"
            time.sleep(0.5)
        started = time.monotonic()
        time.sleep(a.seconds * 0.4)
        s0, n0 = inference_seconds(metrics_port)
        time.sleep(a.seconds * 0.6)
        s1, n1 = inference_seconds(metrics_port)
        stopped_at = time.time()
        os.killpg(run.pid, signal.SIGTERM)
        run.wait(120)
        elapsed = time.monotonic() - started
        per_cam, latencies, drops, worst, drained = {}, [], {}, [], 0
        for c in CAMS:
            docs = [decode_entry(f) for _, f in client.xrange(stream_key("fpnstream", c))]
            per_cam[c] = len(docs)
            # Steady state: published before the stop (the drain after SIGTERM publishes the
            # frames still queued, later; reported apart).
            steady = [d for d in docs[SKIP_FIRST:] if d["ts"] + d["latency_ms"] / 1000 < stopped_at]
            latencies += [d["latency_ms"] / 1000 for d in steady]
            drained += len(docs) - SKIP_FIRST - len(steady)
            worst += [(round(d["latency_ms"] / 1000, 2), c, i, len(docs)) for i, d in enumerate(docs) if i >= SKIP_FIRST]
            status = {k.decode(): v.decode() for k, v in client.hgetall(status_key("fpnstream", c)).items()}
            drops[c] = json.loads(status.get("dropped") or "{}")
        batch_s = (s1 - s0) / max(1.0, n1 - n0)
        p50, p95, p99 = (float(np.percentile(latencies, q)) for q in (50, 95, 99))
        shares = list(per_cam.values())
        doc = {
            "seconds": round(elapsed, 1), "published": per_cam,
            "share_spread": round((max(shares) - min(shares)) / max(shares), 3),
            "latency_s": {"p50": round(p50, 3), "p95": round(p95, 3), "p99": round(p99, 3)},
            "published_in_the_drain": drained,
            "mean_batch_s": round(batch_s, 3), "p95_over_batch": round(p95 / batch_s, 2), "drops": drops,
            # the slowest entries, drain included: (latency s, camera, entry number, entries of that camera)
            "slowest": sorted(worst, reverse=True)[:8],
        }
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(doc, indent=2))
        print(json.dumps(doc, indent=2))
    finally:
        for p in (rtsp, server):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


if __name__ == "__main__":
    main()
