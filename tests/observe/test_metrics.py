"""The metrics endpoint of a real run, scraped by a real Prometheus (Debian's package), read
back through Prometheus' HTTP API; plus the health endpoints."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from fpnstream.observe.metrics import STAGES, Metrics, MetricsServer
from tests import procs
from tests.conftest import REPO, SMALL_MODEL, free_port, reference_frames, start_run, wait_for


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:  # not listening (yet)
        return 0, str(e)


def test_health_endpoints():
    m = Metrics()
    port = free_port()
    server = MetricsServer(m.registry, "127.0.0.1", port)
    try:
        assert http_get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
        assert http_get(f"http://127.0.0.1:{port}/readyz")[0] == 503
        server.ready = lambda: True
        assert http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200
        code, body = http_get(f"http://127.0.0.1:{port}/metrics")
        assert code == 200 and "fpnstream_stage_seconds_bucket" in body
        assert http_get(f"http://127.0.0.1:{port}/nope")[0] == 404
    finally:
        server.close()


class Prometheus:
    def __init__(self, tmp, target: str) -> None:
        self.port = free_port()
        cfg = tmp / "prometheus.yml"
        cfg.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s"},
            "scrape_configs": [{"job_name": "fpnstream", "static_configs": [{"targets": [target]}]}],
        }))
        self.proc = procs.spawn(
            [shutil.which("prometheus"), f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: http_get(f"http://127.0.0.1:{self.port}/-/ready")[0] == 200, timeout=60, what="prometheus ready")

    def query(self, promql: str) -> list[dict]:
        code, body = http_get(f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        assert code == 200, body
        return json.loads(body)["data"]["result"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def test_real_prometheus_scrapes_a_ray_run(tmp_path, clips, redis_proc, small_checkpoint):
    """Two Ray workers, three files; Prometheus scrapes the driver's one endpoint."""
    assert shutil.which("prometheus"), "scripts/system-deps.sh installs Debian's prometheus"
    port = free_port()
    prom = Prometheus(tmp_path, f"127.0.0.1:{port}")
    client = redis_proc.client()
    names = ["mp4_h264", "mkv_hevc", "webm_vp9"]
    expected = {n: len(reference_frames(clips[n])) for n in names}
    srcs = [a for n in names for a in ("--source", f"{n}={clips[n]}")]
    # --keep-alive: the job stays up after the files end, so a scrape sees the final counts.
    proc = start_run(*srcs, "--model", SMALL_MODEL, "--weights", str(small_checkpoint), "--min-size", "64",
                     "--max-size", "128", "--num-actors", "2", "--keep-alive", "--metrics-port", str(port),
                     "--redis-url", redis_proc.url, "--redis-prefix", "pm")
    try:
        wait_for(lambda: all(client.xlen(f"pm:detections:{{{n}}}") == expected[n] for n in names), proc, what="all published")

        def counts_match() -> bool:
            got = {r["metric"]["stream"]: float(r["value"][1])
                   for r in prom.query("sum by (stream) (fpnstream_frames_published_total)")}
            return got == {n: float(expected[n]) for n in names}

        wait_for(counts_match, proc, timeout=60, what="Prometheus to see the final counts")
        assert http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200
        stages = {r["metric"]["stage"]: float(r["value"][1]) for r in prom.query("sum by (stage) (fpnstream_stage_seconds_count)")}
        assert set(stages) == set(STAGES) and all(v > 0 for v in stages.values()), stages
        workers = {r["metric"]["worker"] for r in prom.query("fpnstream_build_info")}
        assert workers == {"0", "1"}
        decoded = {r["metric"]["stream"]: float(r["value"][1]) for r in prom.query("sum by (stream) (fpnstream_frames_decoded_total)")}
        assert decoded == {n: float(expected[n]) for n in names}
        dets = prom.query("sum(fpnstream_detections_total)")
        published_dets = sum(len(json.loads(f[b"detections"])) for n in names for _, f in client.xrange(f"pm:detections:{{{n}}}"))
        assert float(dets[0]["value"][1]) == published_dets > 0
        up = {r["metric"]["stream"]: float(r["value"][1]) for r in prom.query("max by (stream) (fpnstream_source_up)")}
        assert up == {n: 0.0 for n in names}  # files have ended
        assert prom.query("fpnstream_publish_backlog")  # the series exists
        # Label values never carry credentials or per-frame ids (bounded cardinality).
        series = prom.query('{__name__=~"fpnstream_.*"}')
        label_values = {v for s in series for k, v in s["metric"].items() if k != "__name__"}
        assert not any("@" in v or "://" in v for v in label_values)
        assert len(series) < 600
        # The README's picture comes from this script: it renders a real run from Prometheus.
        png = tmp_path / "metrics.png"
        plot = subprocess.run([sys.executable, str(REPO / "deploy/prometheus/plot_run.py"), "--prometheus",
                               f"http://127.0.0.1:{prom.port}", "--minutes", "2", "--out", str(png)],
                              capture_output=True, text=True, timeout=120)
        assert plot.returncode == 0, plot.stderr
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        assert proc.returncode == 0
    finally:
        proc.kill()
        prom.stop()
