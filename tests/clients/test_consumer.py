"""The consumer API against a real redis-server, entries written by the real sink."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fpnstream.clients.consumer import DetectionConsumer, parse_start
from fpnstream.core.errors import ConfigError
from fpnstream.core.frames import BatchResult, Detections, FrameMeta, StageTimes
from fpnstream.publish.sink import RedisStreamSink

from tests import procs
from tests.conftest import run_cli


def publish(sink: RedisStreamSink, stream: str, start: int, n: int) -> None:
    metas = tuple(FrameMeta(stream, i, i / 30, time.time(), 64, 48, gap=(i == 5)) for i in range(start, start + n))
    dets = tuple(
        Detections(np.array([[i, 2.5, 30, 40], [0, 0, 8, 9]], np.float32), np.array([0.75, 0.5], np.float32),
                   np.array([3, 1]), ("car", "person"))
        for i in range(start, start + n)
    )
    sink.publish(BatchResult(metas, dets, StageTimes(0, 0, 0)))


def make_sink(client) -> RedisStreamSink:
    sink = RedisStreamSink(client, "t", maxlen=0, model_name="m")
    for s in ("a", "b"):
        sink.claim(s, restart=True)
    return sink


def drain(consumer: DetectionConsumer, want: int, timeout: float = 20) -> list:
    got, deadline = [], time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += consumer.read(block_ms=100)
    return got


def test_typed_results_from_the_beginning(redis_proc):
    client = redis_proc.client()
    sink = make_sink(client)
    publish(sink, "a", 0, 10)
    publish(sink, "b", 0, 4)
    consumer = DetectionConsumer(client, "t", start="beginning", block_ms=100)
    results = drain(consumer, 14)
    assert len(results) == 14 and consumer.keys == ["t:detections:{a}", "t:detections:{b}"]
    a = [r for r in results if r.stream_id == "a"]
    assert [r.meta.index for r in a] == list(range(10))
    r = a[7]
    assert r.detections.boxes.dtype == np.float32 and r.detections.boxes.shape == (2, 4)
    np.testing.assert_array_equal(r.detections.boxes[0], np.array([7, 2.5, 30, 40], np.float32))
    assert r.detections.names == ("car", "person") and list(r.detections.labels) == [3, 1]
    assert (r.meta.width, r.meta.height, r.model) == (64, 48, "m")
    assert a[5].meta.gap and not a[4].meta.gap
    assert abs(r.published_ts - time.time()) < 60
    assert consumer.read(block_ms=50) == []  # nothing new


def test_latest_skips_history_and_sees_new_streams(redis_proc):
    client = redis_proc.client()
    sink = make_sink(client)
    publish(sink, "a", 0, 5)
    consumer = DetectionConsumer(client, "t", start="latest", block_ms=100, discover_every_s=0)
    assert consumer.read(block_ms=50) == []
    time.sleep(0.01)
    publish(sink, "a", 5, 3)
    sink.claim("c", restart=True)
    publish(sink, "c", 0, 2)  # a stream that did not exist when the consumer started
    got = drain(consumer, 5)
    assert sorted((r.stream_id, r.meta.index) for r in got) == [("a", 5), ("a", 6), ("a", 7), ("c", 0), ("c", 1)]


def test_start_from_a_time(redis_proc):
    client = redis_proc.client()
    sink = make_sink(client)
    for i in range(6):
        publish(sink, "a", i, 1)
        time.sleep(0.005)  # distinct milliseconds
    ids = [e[0].decode() for e in client.xrange("t:detections:{a}")]
    t3 = int(ids[3].split("-")[0]) / 1000
    got = drain(DetectionConsumer(client, "t", streams=["a"], start=t3, block_ms=100), 3)
    assert [r.meta.index for r in got] == [3, 4, 5]
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t3 - 3600))
    assert len(drain(DetectionConsumer(client, "t", streams=["a"], start=iso, block_ms=100), 6)) == 6
    with pytest.raises(ConfigError, match="start must be"):
        parse_start("yesterday-ish")


def test_group_shares_entries_and_survives_a_crashed_consumer(redis_proc, tmp_path):
    client = redis_proc.client()
    sink = make_sink(client)
    publish(sink, "a", 0, 20)
    publish(sink, "b", 0, 20)
    all_ids = {(k, e[0].decode()) for k in ("t:detections:{a}", "t:detections:{b}") for e in client.xrange(k)}
    assert len(all_ids) == 40

    # A consumer in another process takes 8 entries and dies (SIGKILL) without acking them.
    script = tmp_path / "crash.py"
    script.write_text(
        "import json, os, signal, sys, redis\n"
        "from fpnstream.clients.consumer import DetectionConsumer\n"
        "c = DetectionConsumer(redis.Redis.from_url(sys.argv[1]), 't', group='g', consumer='doomed',\n"
        "                      start='beginning', count=4, claim_idle_ms=None)\n"
        "got = c.read() + c.read()\n"
        "print(json.dumps([[r.key, r.entry_id] for r in got]), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = procs.run([sys.executable, str(script), redis_proc.url], text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    lost = {tuple(x) for x in json.loads(proc.stdout)}
    assert len(lost) == 8
    assert DetectionConsumer(client, "t", group="g", consumer="probe", claim_idle_ms=None).pending() == 8

    c1 = DetectionConsumer(client, "t", group="g", consumer="c1", count=5, block_ms=100, claim_idle_ms=300)
    c2 = DetectionConsumer(client, "t", group="g", consumer="c2", count=5, block_ms=100, claim_idle_ms=300)
    seen: dict[str, list] = {"c1": [], "c2": []}
    acked = 0
    deadline = time.monotonic() + 30
    while acked < 40 and time.monotonic() < deadline:
        for name, c in (("c1", c1), ("c2", c2)):
            results = c.read()
            seen[name] += results
            acked += c.ack(*results)
    everything = [(r.key, r.entry_id) for rs in seen.values() for r in rs]
    assert acked == 40 and len(everything) == 40 and set(everything) == all_ids  # each entry once, none lost
    assert seen["c1"] and seen["c2"]  # the two shared the work
    reclaimed = {(r.key, r.entry_id) for rs in seen.values() for r in rs if r.reclaimed}
    assert reclaimed == lost
    assert c1.pending() == 0


def test_a_restarted_consumer_gets_its_own_unacked_entries_first(redis_proc):
    client = redis_proc.client()
    sink = make_sink(client)
    publish(sink, "a", 0, 6)
    first = DetectionConsumer(client, "t", streams=["a"], group="g", consumer="w", start="beginning", count=3,
                              claim_idle_ms=None)
    taken = first.read()
    assert [r.meta.index for r in taken] == [0, 1, 2]
    again = DetectionConsumer(client, "t", streams=["a"], group="g", consumer="w", count=10, claim_idle_ms=None)
    assert [r.meta.index for r in again.read()] == [0, 1, 2]  # redelivered, not lost
    assert [r.meta.index for r in again.read()] == [3, 4, 5]
    assert again.ack(*taken) == 3 and again.pending() == 3


def test_undecodable_entries_are_skipped_and_acked(redis_proc):
    client = redis_proc.client()
    sink = make_sink(client)
    publish(sink, "a", 0, 2)
    client.xadd("t:detections:{a}", {"v": "99", "junk": "x"})
    publish(sink, "a", 2, 1)
    c = DetectionConsumer(client, "t", group="g", start="beginning", claim_idle_ms=None, block_ms=100)
    got = drain(c, 3)
    assert [r.meta.index for r in got] == [0, 1, 2] and c.skipped == 1
    c.ack(*got)
    assert c.pending() == 0


def test_consumer_name_without_group_is_refused(redis_proc):
    with pytest.raises(ConfigError):
        DetectionConsumer(redis_proc.client(), "t", consumer="x")


def test_tail_group_splits_entries_between_consumers(redis_proc):
    client = redis_proc.client()
    sink = make_sink(client)
    publish(sink, "a", 0, 7)
    args = ["tail", "--redis-url", redis_proc.url, "--redis-prefix", "t", "--group", "viewers"]
    first = run_cli(*args, "--consumer", "one", "--start", "beginning", "--count", "4", timeout=60)
    second = run_cli(*args, "--consumer", "two", "--count", "10", timeout=60)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    frames_one = [json.loads(line)["frame"] for line in first.stdout.splitlines()]
    frames_two = [json.loads(line)["frame"] for line in second.stdout.splitlines()]
    assert frames_one == [0, 1, 2, 3] and frames_two == [4, 5, 6]
    assert json.loads(first.stdout.splitlines()[0])["detections"][0]["name"] == "car"
    assert client.xpending("t:detections:{a}", "viewers")["pending"] == 0  # printed = acked


@pytest.mark.parametrize("extra, message", [
    (["--consumer", "x"], "--consumer and --start need --group"),
    (["--group", "g", "--start", "soonish"], "start must be latest, beginning"),
])
def test_tail_group_bad_options_one_line(redis_proc, extra, message):
    proc = run_cli("tail", "--redis-url", redis_proc.url, "--redis-prefix", "t", *extra, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_small_count_over_many_streams_neither_stalls_nor_loses(redis_proc):
    client = redis_proc.client()
    sink = make_sink(client)
    sink.claim("c", restart=True)
    for s in ("a", "b", "c"):
        publish(sink, s, 0, 1)
    c = DetectionConsumer(client, "t", group="g", start="beginning", count=1, block_ms=2000, claim_idle_ms=None)
    assert len(c.keys) == 3
    first = [c.read(count=1) for _ in range(3)]
    assert sorted(r.stream_id for rs in first for r in rs) == ["a", "b", "c"]  # one at a time, none lost
    publish(sink, "c", 1, 3)  # now only the third stream has new entries
    t0 = time.monotonic()
    got = [r.meta.index for _ in range(3) for r in c.read(count=1)]
    assert got == [1, 2, 3] and time.monotonic() - t0 < 1.5  # no blocking on the idle streams
    assert c.read(count=1, block_ms=50) == []


def test_close_hands_fetched_but_unread_entries_to_the_group(redis_proc):
    client = redis_proc.client()
    sink = make_sink(client)
    publish(sink, "a", 0, 2)
    publish(sink, "b", 0, 2)
    first = DetectionConsumer(client, "t", group="g", consumer="one", start="beginning", count=3, claim_idle_ms=None)
    taken = first.read(count=3)  # one round brings 2 + 2: one is kept back
    assert len(taken) == 3
    first.ack(*taken)
    first.close()
    other = DetectionConsumer(client, "t", group="g", consumer="two", claim_idle_ms=None)
    back = other.reclaim(min_idle_ms=60_000)  # released entries count as long idle
    assert len(back) == 1 and back[0].reclaimed and other.ack(*back) == 1
    assert other.pending() == 0


def test_reclaim_without_an_idle_time_is_refused_and_trimmed_entries_are_dropped(redis_proc):
    client = redis_proc.client()
    sink = make_sink(client)
    publish(sink, "a", 0, 3)
    c = DetectionConsumer(client, "t", group="g", consumer="x", start="beginning", claim_idle_ms=None)
    with pytest.raises(ConfigError, match="min_idle_ms"):
        c.reclaim()
    assert len(c.read(count=3)) == 3  # delivered, never acked
    client.xtrim("t:detections:{a}", maxlen=0)  # the entries are trimmed away while pending
    again = DetectionConsumer(client, "t", group="g", consumer="x", claim_idle_ms=None)
    assert again.read(count=10, block_ms=50) == [] and again.skipped == 0
    assert again.pending() == 0  # acked as gone, not left pending forever


@pytest.mark.parametrize("value", ["nan", "inf", "1e300", "-5"])
def test_start_rejects_impossible_times(value):
    with pytest.raises(ConfigError, match="start must be"):
        parse_start(value)
