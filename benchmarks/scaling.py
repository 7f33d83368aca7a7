"""Measurements for docs/SCALING.md: what the coordinator costs per stream, and what one
Redis server takes of fpnstream's writes.

1. Coordinator: the real `Coordinator` (its tick: poll every worker, take reports, place
   and balance streams, write every status hash to a real Redis) over a pool of lightweight
   workers that skip decoding and the model and answer status polls with a report per
   stream. Tick time and the driver's memory for 2,000 streams over 50 and 100 workers.
2. Redis: the publish script as fpnstream calls it (one EVALSHA per batch for all its
   streams; on a Redis Cluster one per hash slot) against one local redis-server, and with
   --redis-cluster also against a local three-node cluster: entries/s, bytes per entry and
   server CPU per entry.

    .venv/bin/python benchmarks/scaling.py [--redis-url redis://127.0.0.1:6379/9] [--redis-cluster]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
import sys
import tracemalloc
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry
from redis.cluster import RedisCluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.redis_cluster, for --redis-cluster

from fpnstream.config.settings import SourceConfig, build_config
from fpnstream.core.frames import BatchResult, Detections, FrameMeta, StageTimes
from fpnstream.core.health import DetectorProgress
from fpnstream.core.reports import Assignment, StreamReport, StreamState, WorkerInfo, WorkerStatus
from fpnstream.observe.metrics import DriverMetrics
from fpnstream.publish.connection import connect, is_cluster
from fpnstream.publish.keys import stream_key
from fpnstream.publish.sink import RedisStreamSink
from fpnstream.runtime.coordinator import Coordinator
from fpnstream.runtime.status_board import StatusBoard


class LightPool:
    """Workers that hold streams and report on them, without decoding or a model."""

    def __init__(self, n: int) -> None:
        self.streams: list[dict[str, StreamReport]] = [{} for _ in range(n)]

    def start(self):
        return [WorkerInfo(f"w{i}", "light", "none", "bench", i) for i in range(len(self.streams))]

    def poll(self, timeout_s):
        out = []
        for i, mine in enumerate(self.streams):
            for rep in mine.values():
                rep.decoded += 3
                rep.published += 3
                rep.fps = 10.0
            out.append(WorkerStatus(f"w{i}", True, dict(mine), DetectorProgress(0.0, 0.05), ""))
        return out

    def assign(self, index, spec, owner, restart):
        self.streams[index][spec.stream_id] = StreamReport(spec.stream_id, live=True, state=StreamState.STREAMING)
        return Assignment(0)

    def unassign(self, index, stream_id):
        self.streams[index].pop(stream_id, None)

    def reload(self, index):
        return None

    def restart(self, index):
        pass

    def drain(self, grace_s, indices):
        return {}

    def grow(self):
        raise NotImplementedError

    def spare_capacity(self):
        return False

    def request_capacity(self, workers):
        pass

    def close(self):
        pass


def coordinator_cost(url: str, streams: int, workers: int, ticks: int = 10) -> dict:
    client = connect(url, cluster=False)
    client.flushdb()
    cfg = build_config({"redis": {"url": url, "prefix": "scale"}, "ray": {"num_actors": workers},
                        "metrics": {"port": 0}})
    tracemalloc.start()
    pool = LightPool(workers)
    coord = Coordinator(cfg, pool, StatusBoard(client, "scale", DriverMetrics(CollectorRegistry())),
                        DriverMetrics(CollectorRegistry()))
    coord.start_workers()
    t0 = time.perf_counter()
    coord.add_streams([SourceConfig(uri=f"rtsp://cam{i}.local/s", id=f"cam{i:05d}") for i in range(streams)])
    add_s = time.perf_counter() - t0
    times = []
    for _ in range(ticks):
        t = time.perf_counter()
        coord.tick()
        times.append(time.perf_counter() - t)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    per_worker = sorted(len(s) for s in pool.streams)
    return {"streams": streams, "workers": workers, "add_all_s": round(add_s, 2),
            "tick_ms_median": round(statistics.median(times) * 1000, 1), "tick_ms_max": round(max(times) * 1000, 1),
            "tick_us_per_stream": round(statistics.median(times) * 1e6 / streams, 1),
            "python_heap_peak_mb": round(peak / 2**20, 1), "streams_per_worker_min_max": [per_worker[0], per_worker[-1]]}


def _server_totals(client) -> tuple[int, float]:
    """(used memory bytes, CPU seconds) of the server, summed over a cluster's primaries."""
    if is_cluster(client):
        infos = list(client.info(target_nodes=RedisCluster.PRIMARIES).values())
    else:
        infos = [client.info()]
    return (sum(i["used_memory"] for i in infos), sum(i["used_cpu_user"] + i["used_cpu_sys"] for i in infos))


def redis_throughput(url: str, streams: int = 100, batch: int = 8, dets: int = 5, seconds: float = 5.0) -> dict:
    client = connect(url)  # a cluster when the URL names a node of one
    client.flushdb()  # on a cluster: every primary
    sink = RedisStreamSink(client, "rt", maxlen=1000, model_name="m")
    for i in range(streams):
        sink.claim(f"s{i}", owner=f"o{i}", restart=True)
    b = np.array([[10, 20, 110, 220]] * dets, np.float32)
    d = Detections(b, np.full(dets, 0.9, np.float32), np.ones(dets, np.int64), ("person",) * dets)
    frame, n, t0 = 0, 0, time.perf_counter()
    used0, cpu0 = _server_totals(client)
    while time.perf_counter() - t0 < seconds:
        ids = [(frame * batch + k) % streams for k in range(batch)]
        metas = tuple(FrameMeta(f"s{i}", frame, frame / 30, time.time(), 1280, 720, lease=f"o{i}") for i in ids)
        sink.publish(BatchResult(metas, (d,) * batch, StageTimes(0, 0, 0)))
        frame += 1
        n += batch
    secs = time.perf_counter() - t0
    used1, cpu1 = _server_totals(client)
    entries = sum(client.xlen(stream_key("rt", f"s{i}")) for i in range(streams))
    return {"cluster": is_cluster(client), "batch": batch, "detections_per_entry": dets,
            "entries_per_s": round(n / secs), "bytes_per_entry_in_redis": round((used1 - used0) / max(entries, 1)),
            "redis_cpu_ms_per_entry": round((cpu1 - cpu0) * 1000 / max(n, 1), 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/9")
    ap.add_argument("--out", default="benchmarks/out/scaling.json")
    ap.add_argument("--redis-cluster", action="store_true",
                    help="also measure the publish script against a local three-node Redis Cluster")
    a = ap.parse_args()
    doc = {"coordinator": [coordinator_cost(a.redis_url, 2000, w) for w in (50, 100)],
           "redis": [redis_throughput(a.redis_url, batch=b) for b in (1, 8)],
           "driver_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if a.redis_cluster:
        import tempfile

        from tests.redis_cluster import RedisClusterProcs, cluster_ports

        try:
            cluster = RedisClusterProcs(Path(tempfile.mkdtemp()), cluster_ports(3))
            doc["redis_cluster_3_nodes"] = [redis_throughput(cluster.url, batch=b) for b in (1, 8)]
        finally:
            from tests import procs

            procs.reap_all(procs._long_lived)
    print(json.dumps(doc, indent=2))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
