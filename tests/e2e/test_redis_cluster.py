"""fpnstream against a real three-node Redis Cluster: a run on Ray, a consumer group,
`tail` and `streams list`; a stream's keys share one hash slot on one node."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from fpnstream.clients.consumer import DetectionConsumer
from fpnstream.publish.connection import connect, is_cluster
from fpnstream.publish.keys import events_key, status_key, stream_key
from fpnstream.publish.schema import decode_entry
from fpnstream.devtools.synthetic import write_clip
from tests.conftest import SMALL_MODEL, reference_frames, run_cli
from tests.redis_cluster import RedisClusterProcs, cluster_ports

PREFIX = "rc"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> RedisClusterProcs:
    return RedisClusterProcs(tmp_path_factory.mktemp("rcluster"), cluster_ports(3))


def ids_on_each_node(cluster: RedisClusterProcs) -> list[str]:
    """One stream id per cluster node (chosen by where its hash slot lives), so the run
    writes to all three shards in every batch."""
    client, picked = cluster.client(), {}
    for i in range(200):
        sid = f"cam{i}"
        node = client.get_node_from_key(stream_key(PREFIX, sid)).name
        picked.setdefault(node, sid)
    assert len(picked) == 3
    return sorted(picked.values())


@pytest.fixture(scope="module")
def cluster_run(cluster, tmp_path_factory, small_checkpoint) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("rc-clips")
    clips = {sid: write_clip(d / f"{sid}.mp4", frames=10 + 2 * i, width=96, height=64, seed=i)
             for i, sid in enumerate(ids_on_each_node(cluster))}
    srcs = [a for sid, p in clips.items() for a in ("--source", f"{sid}={p}")]
    proc = run_cli("run", *srcs, "--model", SMALL_MODEL, "--weights", str(small_checkpoint), "--min-size", "64",
                   "--max-size", "128", "--metrics-port", "0", "--num-actors", "1", "--track",
                   "--redis-url", cluster.url, "--redis-prefix", PREFIX)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stream worker(s) ready" in proc.stderr  # through Ray, the path users run
    return clips


def test_run_on_ray_writes_every_frame_once_to_every_shard(cluster, cluster_run):
    client = cluster.client()
    nodes = set()
    for sid, clip in cluster_run.items():
        frames = [decode_entry(f)["frame"] for _, f in client.xrange(stream_key(PREFIX, sid))]
        assert frames == list(range(len(reference_frames(clip)))), sid
        assert client.hget(status_key(PREFIX, sid), "state") == b"finished"
        nodes.add(client.get_node_from_key(stream_key(PREFIX, sid)).name)
    assert len(nodes) == 3


def test_a_streams_keys_share_one_slot_on_one_node(cluster, cluster_run):
    for sid in cluster_run:
        keys = [stream_key(PREFIX, sid), status_key(PREFIX, sid)]
        assert len({key_slot(k.encode()) for k in keys}) == 1
        assert key_slot(events_key(PREFIX, sid).encode()) == key_slot(keys[0].encode())
        node = cluster.node_client(keys[0])
        assert node.exists(*keys) == 2  # both on the node that owns the slot, read without redirects
        assert node.cluster("countkeysinslot", key_slot(keys[0].encode())) >= 2
        assert node.hget(keys[1], "tracks")  # the tracker state, saved in the same script call


def test_consumer_group_reads_every_entry_once_across_shards(cluster, cluster_run):
    client = connect(cluster.url)  # finds out by itself that this is a cluster
    assert is_cluster(client)
    expected = {(sid, i) for sid, clip in cluster_run.items() for i in range(len(reference_frames(clip)))}
    a = DetectionConsumer(client, PREFIX, group="g", consumer="a", start="beginning", count=7, block_ms=200)
    b = DetectionConsumer(client, PREFIX, group="g", consumer="b", start="beginning", count=7, block_ms=200)
    seen = []
    for _ in range(50):
        got = a.read() + b.read()
        if not got and len(seen) >= len(expected):
            break
        for r in got:
            seen.append((r.meta.stream_id, r.meta.index))
        a.ack(*got)  # acking on either member works: they share the group
    assert sorted(seen) == sorted(expected)  # every entry once, none twice
    assert a.pending() == 0 and b.pending() == 0
    assert set(a.keys) == {stream_key(PREFIX, sid) for sid in cluster_run}


def test_tail_and_streams_list_against_the_cluster(cluster, cluster_run):
    out = run_cli("tail", "--redis-url", cluster.url, "--redis-prefix", PREFIX, "--count", "2")
    assert out.returncode == 0, out.stderr
    docs = [json.loads(line) for line in out.stdout.splitlines()]
    assert sorted(d["stream"] for d in docs) == sorted(list(cluster_run) * 2)
    for sid, clip in cluster_run.items():  # the newest two of each stream, in order
        n = len(reference_frames(clip))
        assert [d["frame"] for d in docs if d["stream"] == sid] == [n - 2, n - 1]
    group = run_cli("tail", "--redis-url", cluster.url, "--redis-prefix", PREFIX, "--group", "cli", "--start", "beginning",
                    "--count", "5")
    assert group.returncode == 0, group.stderr
    assert len(group.stdout.splitlines()) == 5
    listed = run_cli("streams", "--redis-url", cluster.url, "--redis-prefix", PREFIX, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["id"]: r for r in map(json.loads, listed.stdout.splitlines())}
    assert set(rows) == set(cluster_run) and {r["state"] for r in rows.values()} == {"finished"}
    assert all("tracks" not in r and "owner" not in r for r in rows.values())


def test_unix_socket_url_is_refused_for_a_cluster_in_one_line(tmp_path):
    from fpnstream.core.errors import SinkError

    with pytest.raises(SinkError, match="over TCP"):
        connect("unix:///nonexistent.sock", cluster=True)
