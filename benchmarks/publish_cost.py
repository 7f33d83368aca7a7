"""What publishing costs per frame on its own: batches of 8 frames (the feed bench's shape)
with 5 boxes each, written by RedisStreamSink to an embedded redis-server; wall time and
CPU of this process and of redis-server per frame.

    .venv/bin/python benchmarks/publish_cost.py [--batches 300]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from fpnstream.core.frames import Frame
from fpnstream.devtools.feed import StandInDetector
from fpnstream.publish.connection import EmbeddedRedis, connect
from fpnstream.publish.sink import RedisStreamSink


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=300)
    a = ap.parse_args()
    image = np.zeros((360, 640, 3), np.uint8)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as server:
        client = connect(server.url)
        sink = RedisStreamSink(client, "cost", 1000, "stand-in")
        detector = StandInDetector(0.0)
        redis_proc = next(p for p in psutil.process_iter(["name"]) if "redis-server" in (p.info["name"] or "")
                          and any(str(server.port) in c for c in p.cmdline()))
        for layout, stream_of in (("8 streams, 1 frame each", lambda i: f"s{i}"), ("1 stream, 8 frames", lambda i: "one")):
            for sid in {stream_of(i) for i in range(8)}:
                sink.claim(sid, owner="bench", restart=True)
            counters: dict[str, int] = {}
            results = []
            for _ in range(a.batches):
                frames = []
                for i in range(8):
                    sid = stream_of(i)
                    counters[sid] = counters.get(sid, -1) + 1
                    frames.append(Frame(image, sid, counters[sid], None, time.time(), lease="bench"))
                results.append(detector.detect(frames))
            n = 8 * a.batches
            server_cpu0, own_cpu0, t0 = sum(redis_proc.cpu_times()[:2]), _own_cpu(), time.perf_counter()
            written = sum(sum(sink.publish(r).written.values()) for r in results)
            wall, own = time.perf_counter() - t0, _own_cpu() - own_cpu0
            server = sum(redis_proc.cpu_times()[:2]) - server_cpu0
            print(f"{layout}: {written} of {n} entries written; per frame wall {wall / n * 1e3:.3f} ms, "
                  f"client CPU {own / n * 1e3:.3f} ms, redis-server CPU {server / n * 1e3:.3f} ms", flush=True)


if __name__ == "__main__":
    main()
