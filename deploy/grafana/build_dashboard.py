"""Writes dashboards/fpnstream.json. Edit the panels here, then run:
    python deploy/grafana/build_dashboard.py
"""

import json
from pathlib import Path

DS = {"type": "prometheus", "uid": "prometheus"}

PANELS = [
    # title, unit, [(expr, legend)]
    ("Frames published / s per stream", "fps",
     [("sum by (stream) (rate(fpnstream_frames_published_total[1m]))", "{{stream}}")]),
    ("End-to-end latency p95 per stream", "s",
     [("histogram_quantile(0.95, sum by (le, stream) (rate(fpnstream_end_to_end_seconds_bucket[1m])))", "{{stream}}")]),
    ("Stage latency p50 / p95 / p99", "s",
     [(f"histogram_quantile({q}, sum by (le, stage) (rate(fpnstream_stage_seconds_bucket[1m])))", f"{{{{stage}}}} p{int(q * 100)}")
      for q in (0.5, 0.95, 0.99)]),
    ("Dropped frames / s by reason", "fps",
     [("sum by (stream, reason) (rate(fpnstream_frames_dropped_total[1m]))", "{{stream}} {{reason}}")]),
    ("Queue depth", "short", [("sum by (queue) (fpnstream_queue_depth)", "{{queue}}")]),
    ("Batch size (mean)", "short",
     [("sum(rate(fpnstream_batch_size_sum[1m])) / sum(rate(fpnstream_batch_size_count[1m]))", "mean frames per batch")]),
    ("GPU memory", "bytes", [("sum by (device, worker) (fpnstream_gpu_memory_bytes)", "worker {{worker}} {{device}}")]),
    ("Sources up", "short", [("max by (stream) (fpnstream_source_up)", "{{stream}}")]),
    ("Source reconnects / 5m", "short",
     [("sum by (stream) (increase(fpnstream_source_reconnects_total[5m]))", "{{stream}}")]),
    ("Publish backlog and errors", "short",
     [("sum(fpnstream_publish_backlog)", "backlog (frames)"),
      ("sum(increase(fpnstream_publish_errors_total[5m]))", "errors / 5m")]),
    ("Detections / s by class", "short",
     [("sum by (name) (rate(fpnstream_detections_total[1m]))", "{{name}}")]),
    ("Decoded frames / s per stream", "fps",
     [("sum by (stream) (rate(fpnstream_frames_decoded_total[1m]))", "{{stream}}")]),
    ("Coordinator: Redis reachable, outages", "short",
     [("min(fpnstream_redis_up)", "Redis up"),
      ("sum(increase(fpnstream_redis_outages_total[15m]))", "outages / 15m")]),
    ("Coordinator: stream moves and hung workers / 15m", "short",
     [("sum by (reason) (increase(fpnstream_stream_moves_total[15m]))", "moves: {{reason}}"),
      ("sum(increase(fpnstream_worker_hangs_total[15m]))", "hung workers")]),
    ("Zone occupancy (tracked objects inside)", "short",
     [("sum by (stream, zone, class) (fpnstream_zone_occupancy)", "{{stream}} {{zone}} {{class}}")]),
    ("Line crossings / 5m by direction", "short",
     [("sum by (stream, line, direction, class) (increase(fpnstream_line_crossings_total[5m]))",
       "{{stream}} {{line}} {{direction}} {{class}}")]),
]


def build() -> dict:
    panels = []
    for i, (title, unit, targets) in enumerate(PANELS):
        panels.append({
            "id": i + 1,
            "type": "timeseries",
            "title": title,
            "datasource": DS,
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"datasource": DS, "expr": e, "legendFormat": leg, "refId": chr(65 + k)}
                        for k, (e, leg) in enumerate(targets)],
        })
    return {
        "uid": "fpnstream",
        "title": "fpnstream",
        "tags": ["fpnstream"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": []},
        "annotations": {"list": []},
        "panels": panels,
    }


if __name__ == "__main__":
    out = Path(__file__).parent / "dashboards" / "fpnstream.json"
    out.write_text(json.dumps(build(), indent=2) + "\n")
    print(f"wrote {out}")
