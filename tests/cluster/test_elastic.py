"""The pool follows the cluster (a multi-node `ray.cluster_utils.Cluster` on loopback): a node
that joins gets a worker and a share of the streams, a node that leaves gives them back,
and the autoscaler is asked for capacity when the streams need more. Every file frame is
published exactly once throughout."""

from __future__ import annotations

import pytest

from fpnstream.devtools.synthetic import write_clip
from fpnstream.publish.schema import decode_entry
from tests.conftest import SMALL_MODEL, start_run, wait_for
from tests.faults import exactly_once, record

FRAMES = 100


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("elastic")
    return [write_clip(d / f"e{i}.mp4", frames=FRAMES, width=96, height=64, seed=30 + i) for i in range(4)]


def frames_in(client, sid: str) -> list[int]:
    return [decode_entry(f)["frame"] for _, f in client.xrange(f"el:detections:{{{sid}}}")]


def test_node_joins_gets_a_share_then_leaves_and_streams_come_back(tmp_path, clips, redis_proc, small_checkpoint):
    from ray.cluster_utils import Cluster

    cfg = tmp_path / "elastic.yaml"
    cfg.write_text("ray:\n  num_cpus_per_actor: 1\n  max_actors: 2\n  streams_per_worker: 2\n  poll_interval_s: 1\n"
                   "  balance_cooldown_s: 600\n")
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1})
    client = redis_proc.client()
    try:
        srcs = [a for p in clips for a in ("--source", str(p))]
        proc = start_run("--config", str(cfg), *srcs, "--model", SMALL_MODEL, "--weights", str(small_checkpoint),
                         "--min-size", "64", "--max-size", "128", "--metrics-port", "0", "--ray-address",
                         cluster.address, "--redis-url", redis_proc.url, "--redis-prefix", "el")
        try:
            wait_for(lambda: sum(client.xlen(f"el:detections:{{{p.stem}}}") for p in clips) >= 20, proc, timeout=180,
                     what="first frames")
            # 4 streams at 2 per worker need 2 workers; the cluster holds 1: the autoscaler is asked
            status = _autoscaler_demand(cluster.address)
            assert status.count({"CPU": 1.0}) == 2, status
            node = cluster.add_node(num_cpus=1)
            wait_for(lambda: sum(client.hget(f"el:status:{{{p.stem}}}", "worker") == b"1" for p in clips) == 2, proc,
                     timeout=120, what="half of the streams on the new worker")
            moved_at = {p.stem: len(frames_in(client, p.stem)) for p in clips}
            cluster.remove_node(node)
            _, err = proc.communicate(timeout=300)
        finally:
            proc.kill()
        assert proc.returncode == 0, err[-3000:]
        assert "starting worker 1" in err and "worker 1 joined" in err and "to balance load" in err
        # Ray keeps a request until it is replaced: the job withdrew it, so no node stays up for it.
        assert _autoscaler_demand(cluster.address) == []
        for p in clips:
            frames = frames_in(client, p.stem)
            record(f"node joined then left ({p.stem})", **exactly_once(frames, FRAMES), frames_before_join=moved_at[p.stem])
            assert frames == list(range(FRAMES)), p.stem
    finally:
        cluster.shutdown()


def _autoscaler_demand(address: str) -> list[dict]:
    """The resource bundles requested of the autoscaler, read back from Ray's autoscaler
    state: the GCS key the v1 autoscaler polls, or the v2 cluster status's constraints."""
    import json
    import subprocess
    import sys

    code = ("import json, ray\n"
            f"ray.init(address={address!r}, logging_level='ERROR')\n"
            "from ray._private.ray_constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL\n"
            "from ray.experimental.internal_kv import _internal_kv_get\n"
            "from ray.autoscaler.v2.sdk import get_cluster_status\n"
            "v1 = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)\n"
            "out = json.loads(v1) if v1 else []\n"
            "st = get_cluster_status(ray.get_runtime_context().gcs_address)\n"
            "out += [dict(b.bundle) for d in st.resource_demands.cluster_constraint_demand\n"
            "        for b in d.bundles_by_count for _ in range(b.count)]\n"
            "print(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
