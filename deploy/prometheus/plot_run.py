"""Render a run's metrics from Prometheus into one PNG (what the Grafana dashboard shows).

    python deploy/prometheus/plot_run.py --prometheus http://127.0.0.1:9090 \
        --minutes 5 --out docs/metrics.png
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.parse
import urllib.request

PANELS = [
    ("Frames published / s per stream", "sum by (stream) (rate(fpnstream_frames_published_total[15s]))", "{stream}"),
    ("End-to-end latency p95 per stream (s)",
     "histogram_quantile(0.95, sum by (le, stream) (rate(fpnstream_end_to_end_seconds_bucket[15s])))", "{stream}"),
    ("Stage latency p95 (s)", "histogram_quantile(0.95, sum by (le, stage) (rate(fpnstream_stage_seconds_bucket[15s])))",
     "{stage}"),
    ("Dropped frames / s by reason", "sum by (reason) (rate(fpnstream_frames_dropped_total[15s]))", "{reason}"),
]


def query_range(base: str, promql: str, start: float, end: float, step: float) -> list[dict]:
    q = urllib.parse.urlencode({"query": promql, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{q}", timeout=30) as r:
        return json.loads(r.read())["data"]["result"]


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ap = argparse.ArgumentParser()
    ap.add_argument("--prometheus", default="http://127.0.0.1:9090")
    ap.add_argument("--minutes", type=float, default=5)
    ap.add_argument("--end", type=float, default=None, help="Unix time (default: now)")
    ap.add_argument("--out", default="metrics.png")
    ap.add_argument("--title", default="fpnstream run")
    a = ap.parse_args()
    end = a.end or time.time()
    start = end - a.minutes * 60
    step = max(1.0, a.minutes * 60 / 300)
    fig, axes = plt.subplots(2, 2, figsize=(13, 7.5))
    for ax, (title, promql, legend) in zip(axes.flat, PANELS):
        for series in query_range(a.prometheus, promql, start, end, step):
            xs = [float(t) - start for t, _ in series["values"]]
            ys = [float(v) if v not in ("NaN", "+Inf") else float("nan") for _, v in series["values"]]
            ax.plot(xs, ys, label=legend.format(**series["metric"]) if series["metric"] else "all")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("seconds")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(a.title)
    fig.tight_layout()
    fig.savefig(a.out, dpi=90)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
