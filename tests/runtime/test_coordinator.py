"""The coordinator's rules over the local pool (workers in this process, what --in-process
runs): no Ray, no mocks, seconds per test. The same rules run over Ray's pool in
tests/cluster/."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry

from fpnstream.config.settings import build_config
from fpnstream.devtools.synthetic import write_clip
from fpnstream.job import run_coordinated
from fpnstream.observe.metrics import DriverMetrics
from fpnstream.publish.schema import decode_entry
from fpnstream.runtime.pool import LocalPool
from fpnstream.runtime.status_board import StatusBoard
from tests.conftest import SMALL_MODEL


def config(redis_url, ckpt, clips, prefix, **ray):
    return build_config({
        "sources": [{"uri": str(c), "id": c.stem} for c in clips],
        "model": {"name": SMALL_MODEL, "weights": str(ckpt), "device": "cpu", "min_size": 64, "max_size": 128},
        "ray": {"in_process": True, "poll_interval_s": 0.2, **ray},
        "redis": {"url": redis_url, "prefix": prefix, "spool_dir": None},
        "metrics": {"port": 0}, "preview": {"fps": 0}, "status_interval_s": 0,
    })


def run(cfg, client, size):
    metrics = DriverMetrics(CollectorRegistry())
    board = StatusBoard(client, cfg.redis.prefix, metrics)
    report = run_coordinated(cfg, LocalPool(cfg, cfg.redis.url, size=size), board, metrics, lambda i, text: None,
                             threading.Event())
    return report, metrics


def frames(client, prefix, sid):
    return [decode_entry(f)["frame"] for _, f in client.xrange(f"{prefix}:detections:{{{sid}}}")]


def test_streams_spread_over_local_workers_every_frame_once(tmp_path, redis_proc, small_checkpoint):
    clips = [write_clip(tmp_path / f"c{i}.mp4", frames=20, width=96, height=64, seed=i) for i in range(4)]
    client = redis_proc.client()
    cfg = config(redis_proc.url, small_checkpoint, clips, "lp")
    report, _ = run(cfg, client, size=2)
    for c in clips:
        assert frames(client, "lp", c.stem) == list(range(20))
        assert report.streams[c.stem].state == "finished" and report.streams[c.stem].published == 20
    assert {client.hget(f"lp:status:{{{c.stem}}}", "worker") for c in clips} == {b"0", b"1"}


def test_hung_local_worker_is_replaced_and_its_stream_resumes(tmp_path, redis_proc, small_checkpoint, monkeypatch):
    """The hang rule of a Ray run, in this process: the stuck worker's stream moves, the
    worker is replaced by a fresh one, nothing is lost or written twice."""
    marker = tmp_path / "hung"
    monkeypatch.setenv("FPNSTREAM_FAILPOINTS", f"detector.hang:after=5:once={marker}")
    clip = write_clip(tmp_path / "h.mp4", frames=60, width=96, height=64, seed=9)
    client = redis_proc.client()
    cfg = config(redis_proc.url, small_checkpoint, [clip], "lh", hang_floor_s=2.0)
    report, metrics = run(cfg, client, size=1)
    assert marker.exists(), "the failpoint fired"
    assert frames(client, "lh", "h") == list(range(60))
    assert client.hget("lh:status:{h}", "last_move") == b"worker 0 hung"
    assert metrics.worker_hangs._value.get() == 1
    assert report.streams["h"].state == "finished"


def _one_clip_with_failpoint(tmp_path, redis_proc, checkpoint, monkeypatch, prefix: str, failpoint: str, n: int):
    """One worker, one file stream `c` of `n` frames, `failpoint` set to fire once: the
    client and the run's report, after checking that it fired."""
    marker = tmp_path / "fired"
    monkeypatch.setenv("FPNSTREAM_FAILPOINTS", f"{failpoint}:once={marker}")
    clip = write_clip(tmp_path / "c.mp4", frames=n, width=96, height=64, seed=9)
    client = redis_proc.client()
    report, _ = run(config(redis_proc.url, checkpoint, [clip], prefix), client, size=1)
    assert marker.exists(), "the failpoint fired"
    return client, report


def test_local_worker_whose_detector_raised_is_replaced_and_its_stream_resumes(tmp_path, redis_proc, small_checkpoint,
                                                                            monkeypatch):
    """The same rule for a pipeline stopped by an error (a batch raised): the worker answers
    polls, says why it stopped, and is replaced; nothing lost or written twice."""
    client, report = _one_clip_with_failpoint(tmp_path, redis_proc, small_checkpoint, monkeypatch, "lc",
                                              "detector.crash:after=5", 60)
    assert frames(client, "lc", "c") == list(range(60))
    assert client.hget("lc:status:{c}", "last_move") == b"worker 0 failed"
    assert report.streams["c"].state == "finished"


def test_a_claim_whose_reply_was_lost_is_not_restarted_twice(tmp_path, redis_proc, small_checkpoint, monkeypatch):
    """The claim of a new run was made in Redis and its reply lost (a timeout right after the
    script ran): the next claim goes on in that run. Before, it started another: the run
    number went up twice for one start."""
    client, report = _one_clip_with_failpoint(tmp_path, redis_proc, small_checkpoint, monkeypatch, "rl",
                                              "claim.reply_lost", 20)
    assert report.streams["c"].state == "finished" and frames(client, "rl", "c") == list(range(20))
    assert client.hget("rl:status:{c}", "run") == b"1"
    assert {decode_entry(f)["run"] for _, f in client.xrange("rl:detections:{c}")} == {1}


def test_malformed_control_commands_are_rejected_one_by_one_and_the_job_goes_on(tmp_path, redis_proc, small_checkpoint):
    """Anyone who can write to Redis can send a command: a bad one is refused (the stream it
    names is marked failed, with why), and the running stream loses nothing."""
    clip = write_clip(tmp_path / "live.mp4", frames=30, width=96, height=64, seed=3, fps=10)
    client = redis_proc.client()
    cfg = config(redis_proc.url, small_checkpoint, [clip], "mc")
    cfg = cfg.model_copy(update={"sources": [s.model_copy(update={"realtime": True}) for s in cfg.sources]})
    bad = [{"op": "add", "uri": str(clip), "id": "not-an-object", "analytics": "[1]"},
           {"op": "add", "uri": str(clip), "id": "sets-the-uri", "analytics": '{"uri": "/elsewhere.mp4"}'},
           {"op": "add", "uri": str(clip), "id": "broken-json", "analytics": "{"},
           {"op": b"\xff\xfeadd", "id": "not-utf8", "uri": b"\xc3\x28"},
           {"op": "add", "uri": "rtsp://viewer:${FPNSTREAM_UNSET_VAR}@cam/x", "id": "unset-var"},
           {"op": "add", "uri": str(clip), "id": "deep-json", "analytics": "[" * 100_000 + "]" * 100_000},
           {"op": "add", "uri": str(clip), "id": "live"},  # the running stream, once more
           {"op": "add", "uri": str(clip), "id": "bad-tracking",
            "analytics": '{"tracking": {"enabled": true, "params": {"bogus": 1}}}'}]

    def send_when_running() -> None:
        while not client.exists("mc:detections:{live}"):  # the job has started and reads commands
            threading.Event().wait(0.05)
        for fields in bad:
            client.xadd("mc:control", fields)

    sender = threading.Thread(target=send_when_running, daemon=True)
    sender.start()
    report, _ = run(cfg, client, size=1)
    sender.join(5)
    assert frames(client, "mc", "live") == list(range(30))
    assert report.streams["live"].state == "finished" and report.streams["live"].published == 30
    assert client.hget("mc:status:{not-an-object}", "error") == b"analytics must be a JSON object"
    assert client.hget("mc:status:{sets-the-uri}", "error") == b"analytics may not set uri"
    assert client.hget("mc:status:{broken-json}", "state") == b"failed"
    assert client.hget("mc:status:{unset-var}", "error") == \
        b"source rtsp://***@cam/x refers to ${FPNSTREAM_UNSET_VAR}, which is not set"
    assert client.hget("mc:status:{deep-json}", "state") == b"failed"
    assert client.hget("mc:status:{live}", "error") == b""  # the refused second add did not fail it
    assert b"unknown any algorithm parameter(s): bogus" in client.hget("mc:status:{bad-tracking}", "error")
    assert not client.exists("mc:detections:{not-an-object}") and not client.exists("mc:detections:{sets-the-uri}")


def test_a_stream_fenced_under_its_owner_is_claimed_again_and_loses_nothing(tmp_path, redis_proc, small_checkpoint):
    """Another claim fences the stream's current owner (a timed-out claim that ran after all,
    or a writer outside the job): the owner reports it moved, the coordinator claims it
    again, and it resumes after its last published frame, every frame once."""
    from fpnstream.publish.sink import RedisStreamSink

    clip = write_clip(tmp_path / "f.mp4", frames=40, width=96, height=64, seed=5, fps=10)
    client = redis_proc.client()
    cfg = config(redis_proc.url, small_checkpoint, [clip], "mf")
    cfg = cfg.model_copy(update={"sources": [s.model_copy(update={"realtime": True}) for s in cfg.sources]})
    stop = threading.Event()

    def intrude_then_watch() -> None:
        while client.xlen("mf:detections:{f}") < 5:
            threading.Event().wait(0.05)
        RedisStreamSink(client, "mf", maxlen=0, model_name="m").claim("f", owner="intruder")
        stop.wait(90)  # without the rule the job never ends: stop it so the asserts can say so
        stop.set()

    watcher = threading.Thread(target=intrude_then_watch, daemon=True)
    watcher.start()
    metrics = DriverMetrics(CollectorRegistry())
    report = run_coordinated(cfg, LocalPool(cfg, cfg.redis.url, size=1), StatusBoard(client, "mf", metrics), metrics,
                             lambda i, text: None, stop)
    stop.set()
    assert frames(client, "mf", "f") == list(range(40))
    assert report.streams["f"].state == "finished"
    assert client.hget("mf:status:{f}", "last_move") == b"worker 0 fenced by another claim"


def test_a_stream_added_while_redis_is_away_gets_its_whole_status_once_it_is_back(tmp_path):
    """Every status write the coordinator skips in an outage is made up by a later tick:
    the stream's `uri` and `live` too, not only what changes."""
    import redis

    from fpnstream.config.settings import SourceConfig
    from fpnstream.runtime.coordinator import Coordinator
    from tests.conftest import RedisProc

    server = RedisProc(tmp_path)
    port = server.port
    server.proc.kill()
    server.proc.wait()
    cfg = build_config({"sources": [], "keep_alive": True, "ray": {"in_process": True},
                        "redis": {"url": f"redis://127.0.0.1:{port}/0", "prefix": "ua", "spool_dir": None},
                        "metrics": {"port": 0}})
    metrics = DriverMetrics(CollectorRegistry())
    board = StatusBoard(redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2), "ua", metrics, "0-0")
    coordinator = Coordinator(cfg, LocalPool(cfg, cfg.redis.url, size=0), board, metrics, environ={})
    try:
        coordinator.add_streams([SourceConfig(id="cam", uri="rtsp://viewer:pw@10.0.0.9/live")])
        assert not board.up
        server = RedisProc(tmp_path, port=port)
        board.link._next_probe = 0.0  # probe now rather than after the backoff
        coordinator.tick()
        status = server.client().hgetall("ua:status:{cam}")
        assert status[b"uri"] == b"rtsp://***@10.0.0.9/live" and status[b"live"] == b"1"
        assert status[b"state"] == b"waiting_for_worker"
    finally:
        server.stop()


def test_a_stream_its_worker_stopped_unasked_is_claimed_again_and_loses_nothing(tmp_path, redis_proc, small_checkpoint):
    """A balance move's unassign that timed out (the move was given up) can still run on the
    worker later: the worker stops reading and reports the stream stopped. That report ended
    the stream (exit 0, frames missing). Now the stream is claimed again and resumes after
    its last published frame."""
    clip = write_clip(tmp_path / "u.mp4", frames=40, width=96, height=64, seed=6, fps=10)
    client = redis_proc.client()
    cfg = config(redis_proc.url, small_checkpoint, [clip], "mu")
    cfg = cfg.model_copy(update={"sources": [s.model_copy(update={"realtime": True}) for s in cfg.sources]})
    pool = LocalPool(cfg, cfg.redis.url, size=1)
    stop = threading.Event()

    def late_unassign() -> None:
        while client.xlen("mu:detections:{u}") < 5:
            threading.Event().wait(0.05)
        pool.unassign(0, "u")  # what the coordinator asked for earlier and gave up waiting on
        stop.wait(90)  # without the rule the stream ends short (or the job never ends)
        stop.set()

    threading.Thread(target=late_unassign, daemon=True).start()
    metrics = DriverMetrics(CollectorRegistry())
    report = run_coordinated(cfg, pool, StatusBoard(client, "mu", metrics), metrics, lambda i, text: None, stop)
    stop.set()
    assert frames(client, "mu", "u") == list(range(40))
    assert report.streams["u"].state == "finished"
    assert client.hget("mu:status:{u}", "last_move") == b"worker 0 stopped reading it unasked"
