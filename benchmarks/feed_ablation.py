"""Where the host feed's shortfall goes: `fpnstream bench --feed`'s pipeline run with parts
switched off in this process (publishing to Redis, the metrics hooks), against decoding
alone, in interleaved rounds; CPU per frame of this process and of redis-server.

    .venv/bin/python benchmarks/feed_ablation.py {as-shipped,no-publish,no-metrics,neither} [--size 640x360]

A measuring aid only: the variants drop work the product must do.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
from pathlib import Path
from statistics import median

import fpnstream.observe.metrics as metrics
from fpnstream.devtools.bench import make_inputs
from fpnstream.devtools.feed import decode_alone, pipeline_fed
from fpnstream.publish.connection import EmbeddedRedis
from fpnstream.publish.sink import PublishResult, RedisStreamSink


def _no_publish(self, result):
    now = self._clock()
    return PublishResult([now - m.capture_ts for m in result.metas], {}, frozenset())


def _server_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variant", choices=["as-shipped", "no-publish", "no-metrics", "neither"])
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=4)
    a = ap.parse_args()
    if a.variant in ("no-publish", "neither"):
        RedisStreamSink.publish = _no_publish
    if a.variant in ("no-metrics", "neither"):
        for hook in ("stage", "published", "decoded", "batch_formed"):
            setattr(metrics.MetricsObserver, hook, lambda self, *args: None)
    w, h = (int(v) for v in a.size.split("x"))
    clips = 8 if w * h <= 640 * 360 else 4
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_inputs(Path(tmp), clips, a.frames, w, h)
        n = clips * a.frames
        decode_alone(paths)
        with EmbeddedRedis(Path(tmp) / "redis") as server:
            pid = server.pid
            pipeline_fed(paths, 8, 0.002, server.url)  # imports, first use
            alone, fed, cpu_alone, cpu_fed, cpu_server = [], [], [], [], []
            for _ in range(a.rounds):
                c0 = _own_cpu()
                alone.append(decode_alone(paths))
                c1, s1 = _own_cpu(), _server_cpu(pid)
                fed.append(pipeline_fed(paths, 8, 0.002, server.url)[0])
                c2, s2 = _own_cpu(), _server_cpu(pid)
                cpu_alone.append((c1 - c0) / n * 1000)
                cpu_fed.append((c2 - c1) / n * 1000)
                cpu_server.append((s2 - s1) / n * 1000)
    print(f"{a.variant}: ratio {median(fed) / median(alone):.3f} (rounds {[round(f / d, 2) for f, d in zip(fed, alone)]}), "
          f"ms CPU/frame: pipeline {median(cpu_fed):.3f}, decode alone {median(cpu_alone):.3f}, "
          f"redis-server {median(cpu_server):.3f}")


if __name__ == "__main__":
    main()
