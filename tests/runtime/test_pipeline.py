"""The whole pipeline in-process (no Ray): real clips, a real redis-server, real metrics."""

import threading
import time

import pytest
from prometheus_client import generate_latest

from fpnstream.detection.backends import InProcessBackend
from fpnstream.config.settings import BatchConfig, DecodeConfig, ModelConfig, SourceConfig
from fpnstream.observe.metrics import Metrics, MetricsObserver
from fpnstream.detection.model import Detector
from fpnstream.runtime.pipeline import Pipeline
from fpnstream.publish.schema import decode_entry
from fpnstream.publish.sink import RedisStreamSink
from fpnstream.sources import VideoDecoder, resolve_sources
from tests.conftest import SMALL_MODEL, reference_frames


@pytest.fixture(scope="module")
def detector(small_checkpoint):
    return Detector.from_config(ModelConfig(name=SMALL_MODEL, weights=str(small_checkpoint), device="cpu", score_threshold=0.3))


_backends: list[InProcessBackend] = []


@pytest.fixture(autouse=True)
def _close_backends():
    """Each test's lane threads end with it: lanes left alive in this test process would make
    the next Detector built here refuse to set torch's threads (fpnstream.detection.lanes),
    which depends on which tests xdist gave this process before."""
    yield
    while _backends:
        _backends.pop().close()


def backend_of(detector, **kw) -> InProcessBackend:
    _backends.append(InProcessBackend(detector, **kw))
    return _backends[-1]


def make_pipeline(detector, redis_client, sources, metrics, batch=BatchConfig(max_size=4, max_wait_ms=20), queue_size=4,
                  **options):
    sink = RedisStreamSink(redis_client, "p", maxlen=0, model_name=detector.model_name)
    pipeline = Pipeline(backend_of(detector), sink, MetricsObserver(metrics), batch, queue_size, **options)
    for spec in resolve_sources(sources):
        sink.claim(spec.stream_id, restart=True)
        pipeline.add_source(VideoDecoder(spec, DecodeConfig()))
    return pipeline


def test_every_frame_of_every_file_exactly_once_in_order(detector, redis_proc, clips):
    client = redis_proc.client()
    metrics = Metrics()
    names = ["mp4_h264", "mkv_hevc", "webm_vp9", "odd_size"]
    sources = [SourceConfig(uri=str(clips[n]), id=n) for n in names]
    report = make_pipeline(detector, client, sources, metrics).run(threading.Event())
    total_dets = 0
    for n in names:
        ref = reference_frames(clips[n])
        docs = [decode_entry(f) for _, f in client.xrange(f"p:detections:{{{n}}}")]
        assert [d["frame"] for d in docs] == list(range(len(ref)))
        assert [d["pts"] for d in docs] == pytest.approx([pts for _, pts, _ in ref], abs=1e-9)
        assert {(d["width"], d["height"]) for d in docs} == {(ref[0][2].shape[1], ref[0][2].shape[0])}
        assert all(d["model"] == SMALL_MODEL and d["latency_ms"] > 0 for d in docs)
        total_dets += sum(len(d["detections"]) for d in docs)
        assert report.streams[n].published == report.streams[n].decoded == len(ref)
        assert metrics.frames_published.labels(n)._value.get() == len(ref)
        assert metrics.frames_decoded.labels(n)._value.get() == len(ref)
    assert total_dets > 100  # the calibrated checkpoint fires
    text = generate_latest(metrics.registry).decode()
    for stage in ("decode", "batch_wait", "preprocess", "inference", "postprocess", "publish"):
        assert f'fpnstream_stage_seconds_count{{stage="{stage}"}}' in text
        count = float(text.split(f'fpnstream_stage_seconds_count{{stage="{stage}"}} ')[1].split()[0])
        assert count > 0, stage
    assert "fpnstream_batch_size_count" in text and "fpnstream_end_to_end_seconds_bucket" in text


def test_fps_sampling_counts_sampled_frames(detector, redis_proc, clips):
    client = redis_proc.client()
    metrics = Metrics()
    src = [SourceConfig(uri=str(clips["mp4_h264"]), id="s", fps=10)]
    report = make_pipeline(detector, client, src, metrics).run(threading.Event())
    frames = [decode_entry(f)["frame"] for _, f in client.xrange("p:detections:{s}")]
    assert frames == list(range(0, 24, 3))
    assert report.streams["s"].dropped == {"sampled": 16}
    assert metrics.frames_dropped.labels("s", "sampled")._value.get() == 16


def test_truncated_file_publishes_decodable_frames_and_warns(detector, redis_proc, clips):
    client = redis_proc.client()
    report = make_pipeline(detector, client, [SourceConfig(uri=str(clips["truncated_mkv"]), id="t")], Metrics()).run(threading.Event())
    n = len(reference_frames(clips["truncated_mkv"]))
    assert client.xlen("p:detections:{t}") == n == report.streams["t"].published
    assert "truncated" in report.streams["t"].warning


def test_stop_drains_what_was_decoded(detector, redis_proc, tmp_path):
    from fpnstream.devtools.synthetic import write_clip

    long_clip = write_clip(tmp_path / "long.mp4", frames=300, width=160, height=120)
    client = redis_proc.client()
    stop = threading.Event()
    pipeline = make_pipeline(detector, client, [SourceConfig(uri=str(long_clip), id="l")], Metrics())
    threading.Timer(1.0, stop.set).start()
    t = time.monotonic()
    report = pipeline.run(stop)
    assert time.monotonic() - t < 30
    frames = [decode_entry(f)["frame"] for _, f in client.xrange("p:detections:{l}")]
    assert 0 < len(frames) < 300
    assert frames == list(range(len(frames)))  # contiguous: nothing accepted was lost
    r = report.streams["l"]
    assert r.published == len(frames)
    # Every decoded frame is published, or counted as decoded after the stop (at most one).
    assert r.decoded == r.published + r.dropped.get("stopped", 0) and r.dropped.get("stopped", 0) <= 1


def test_sink_failure_stops_the_run_with_the_error(detector, redis_proc, clips):
    from fpnstream.core.errors import SinkError

    client = redis_proc.client()
    pipeline = make_pipeline(detector, client, [SourceConfig(uri=str(clips["mp4_h264"]), id="x")], Metrics(),
                             outage_wait_s=2.0)
    redis_proc.stop()
    with pytest.raises(SinkError, match="still unreachable after 2 s; 24 frame"):
        pipeline.run(threading.Event())


def test_a_failing_source_affects_only_its_stream(detector, redis_proc, clips):
    """A live source that serves garbage keeps failing and backing off, alone; the file
    next to it is complete."""
    import socket

    from fpnstream.core.backoff import Backoff

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.sendall(b"\x00garbage, not a video stream\xff" * 2000)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    client = redis_proc.client()
    sources = [SourceConfig(uri=str(clips["mp4_h264"]), id="good"), SourceConfig(uri=f"tcp://127.0.0.1:{port}", id="bad")]
    pipeline = make_pipeline(detector, client, sources, Metrics(), backoff=lambda: Backoff(0.05, 0.2))
    stop = threading.Event()
    out = {}
    runner = threading.Thread(target=lambda: out.setdefault("report", pipeline.run(stop)))
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while not (pipeline.snapshot()["good"].state == "finished" and pipeline.snapshot()["bad"].reconnects >= 2):
            assert time.monotonic() < deadline, pipeline.snapshot()
            time.sleep(0.1)
        bad = pipeline.snapshot()["bad"]
        assert bad.state in ("connecting", "backing_off") and "not a readable video" in bad.error
    finally:
        stop.set()
        runner.join(30)
        srv.close()
    report = out["report"]
    assert report.streams["good"].state == "finished"
    n = len(reference_frames(clips["mp4_h264"]))
    assert [decode_entry(f)["frame"] for _, f in client.xrange("p:detections:{good}")] == list(range(n))
    assert client.xlen("p:detections:{bad}") == 0


def first_claim_on_a_stand_in(client, tmp_path, prefix, batch_s, queue_size):
    """A worker's pipeline (streams come and go) on the zero-cost stand-in detector, reading a
    60-frame clip as stream "c" under the claim "first"; not started."""
    from fpnstream.devtools.feed import StandInDetector
    from fpnstream.devtools.synthetic import write_clip

    clip = write_clip(tmp_path / "c.mp4", frames=60, width=64, height=48)
    sink = RedisStreamSink(client, prefix, maxlen=0, model_name="stand-in")
    pipeline = Pipeline(backend_of(StandInDetector(batch_s), max_inflight=2), sink, MetricsObserver(Metrics()),
                        BatchConfig(max_size=2, max_wait_ms=5), queue_size, keep_open=True)
    spec = resolve_sources([SourceConfig(uri=str(clip), id="c")])[0]
    sink.claim("c", owner="first", restart=True)
    pipeline.add_source(VideoDecoder(spec, DecodeConfig(), lease="first"))
    return pipeline, sink, spec


def test_stream_back_on_its_worker_while_old_frames_drain_loses_nothing(redis_proc, tmp_path):
    """A worker's claim is fenced (the stream moved away) and the stream comes back to it
    while batches of the old claim are still detecting: those stay fenced (they carry the
    old lease), so the resume point never jumps past frames the new claim has to publish."""
    from fpnstream.core.reports import StreamState
    from fpnstream.publish.keys import stream_key

    client = redis_proc.client()
    pipeline, sink, spec = first_claim_on_a_stand_in(client, tmp_path, "lz", batch_s=0.15, queue_size=16)
    pipeline.start()
    deadline = time.monotonic() + 30
    while client.xlen(stream_key("lz", "c")) < 6:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    RedisStreamSink(client, "lz", maxlen=0, model_name="m").claim("c", owner="elsewhere")  # moved away
    while pipeline.snapshot()["c"].state != StreamState.MOVED:  # the next publish was refused
        assert time.monotonic() < deadline
        time.sleep(0.005)
    start = sink.claim("c", owner="again")  # ... and back, before the old claim's batches drained
    pipeline.add_source(VideoDecoder(spec, DecodeConfig(), start_index=start, lease="again"))
    pipeline.seal()
    report = pipeline.wait(threading.Event())
    assert [decode_entry(f)["frame"] for _, f in client.xrange(stream_key("lz", "c"))] == list(range(60))
    assert report.streams["c"].state == StreamState.FINISHED and report.streams["c"].published == 60 - start


def test_a_stopping_decoder_leaves_the_next_claim_of_its_stream_alone(redis_proc, tmp_path):
    """The stream is stopped on this worker and taken again at once, while its old decoder
    thread is still on its way out: that decoder's last actions (its file is done, its
    queue closed) belong to the old claim and must not end the new one mid-file. The new
    claim is added exactly while the old decoder reports its end (and waits 0.5 s for it)."""
    from fpnstream.core.reports import StreamState
    from fpnstream.publish.keys import stream_key

    client = redis_proc.client()
    pipeline, sink, spec = first_claim_on_a_stand_in(client, tmp_path, "ls", batch_s=0.05, queue_size=4)
    states_after_add = []

    def add_again() -> None:
        start = sink.claim("c", owner="again")
        pipeline.add_source(VideoDecoder(spec, DecodeConfig(), start_index=start, lease="again"))
        states_after_add.append(start)

    ledger = pipeline._ledger
    original = ledger.source_done
    adder = threading.Thread(target=add_again)

    def source_done_while_the_stream_is_taken_again(stream_id: str) -> None:
        if not adder.is_alive() and not states_after_add:
            adder.start()
            adder.join(0.5)  # with the fix the add waits for this decoder's last actions
        original(stream_id)

    ledger.source_done = source_done_while_the_stream_is_taken_again
    pipeline.start()
    deadline = time.monotonic() + 30
    while client.xlen(stream_key("ls", "c")) < 6:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    pipeline.remove_source("c")
    adder_deadline = time.monotonic() + 30
    while not states_after_add:
        assert time.monotonic() < adder_deadline, "the stream was not taken again"
        time.sleep(0.01)
    adder.join(5)
    # The new claim has ~50 frames to go (a second and more of the stand-in): still reading.
    assert pipeline.snapshot()["c"].state in (StreamState.STARTING, StreamState.STREAMING)
    pipeline.seal()
    report = pipeline.wait(threading.Event())
    assert [decode_entry(f)["frame"] for _, f in client.xrange(stream_key("ls", "c"))] == list(range(60))
    assert report.streams["c"].state == StreamState.FINISHED


def test_a_batch_with_two_claims_of_a_stream_settles_the_new_claims_frames(redis_proc):
    """A batch can hold the last frames of a stream's earlier claim here (refused by Redis)
    beside the first of its new claim (written): only the refused ones go unaccounted."""
    import queue
    from concurrent.futures import Future

    from fpnstream.core.frames import BatchResult, Detections, FrameMeta, StageTimes
    from fpnstream.core.observer import PipelineObserver
    from fpnstream.core.reports import StreamState
    from fpnstream.publish.spool import PublishBuffer
    from fpnstream.runtime.ledger import StreamLedger
    from fpnstream.runtime.publisher import END, Publisher

    client = redis_proc.client()
    sink = RedisStreamSink(client, "lb", maxlen=0, model_name="m")
    sink.claim("cam", owner="first", restart=True)
    start = sink.claim("cam", owner="again")  # the stream came back to this worker
    ledger = StreamLedger(PipelineObserver())
    ledger.open("cam", live=False, lease="again")
    for _ in range(3):
        ledger.accept("cam")
    ledger.source_done("cam")
    fenced = []
    publisher = Publisher(sink, PublishBuffer(None, 100, 0), ledger, PipelineObserver(), 5.0,
                          on_refused=lambda sid, lease, why: fenced.append((sid, lease, why)))
    metas = tuple(FrameMeta("cam", i, None, 1000.0, 64, 48, lease="first") for i in (start, start + 1)) + tuple(
        FrameMeta("cam", i, None, 1000.0, 64, 48, lease="again") for i in range(start, start + 3))
    dets = tuple(Detections.empty() for _ in metas)
    done = queue.Queue()
    future = Future()  # what the detector backend hands the publisher
    future.set_result(BatchResult(metas, dets, StageTimes(0, 0, 0)))
    done.put(future)
    done.put(END)
    publisher.run(done, failed=lambda: False)
    assert fenced == [("cam", "first", "")]
    report = ledger.snapshot()["cam"]
    assert report.published == 3 and report.state == StreamState.FINISHED and ledger.backlog() == 0
    assert [decode_entry(f)["frame"] for _, f in client.xrange("lb:detections:{cam}")] == [0, 1, 2]


def test_frames_fenced_when_another_worker_took_the_stream_are_settled_as_fenced(redis_proc):
    """Frames in flight when another claim took the stream are never written; they leave the
    ledger as dropped (`fenced`), so the backlog goes back to 0 instead of staying inflated."""
    import queue
    from concurrent.futures import Future

    from fpnstream.core.frames import BatchResult, Detections, FrameMeta, StageTimes
    from fpnstream.core.observer import PipelineObserver
    from fpnstream.publish.spool import PublishBuffer
    from fpnstream.runtime.ledger import StreamLedger
    from fpnstream.runtime.publisher import END, Publisher

    client = redis_proc.client()
    sink = RedisStreamSink(client, "fb", maxlen=0, model_name="m")
    sink.claim("cam", owner="mine", restart=True)
    RedisStreamSink(client, "fb", maxlen=0, model_name="m").claim("cam", owner="theirs")
    ledger = StreamLedger(PipelineObserver())
    ledger.open("cam", live=False, lease="mine")
    for _ in range(3):
        ledger.accept("cam")
    refused = []
    publisher = Publisher(sink, PublishBuffer(None, 100, 0), ledger, PipelineObserver(), 5.0,
                          on_refused=lambda sid, lease, why: refused.append((sid, lease)))
    metas = tuple(FrameMeta("cam", i, None, 1000.0, 64, 48, lease="mine") for i in range(3))
    done = queue.Queue()
    future = Future()
    future.set_result(BatchResult(metas, tuple(Detections.empty() for _ in metas), StageTimes(0, 0, 0)))
    done.put(future)
    done.put(END)
    publisher.run(done, failed=lambda: False)
    assert refused == [("cam", "mine")]
    report = ledger.snapshot()["cam"]
    assert report.published == 0 and report.dropped == {"fenced": 3} and ledger.backlog() == 0
    assert client.xlen("fb:detections:{cam}") == 0


def test_a_stream_moved_away_leaves_no_zone_occupancy_behind_on_the_old_worker(tmp_path, redis_proc):
    """Hand-off as the coordinator's balance move does it (the old worker stops reading, the
    new one claims and resumes), one object in the zone all along: the old worker exported
    its last occupancy for ever, and the dashboard's sum by zone counted the object twice."""
    import uuid

    from fpnstream.config.settings import AppConfig
    from fpnstream.core.reports import StreamState
    from fpnstream.devtools.synthetic import MovingSquare, scene_drawer, write_clip
    from fpnstream.runtime.worker import StreamWorker
    from fpnstream.sources import resolve_sources

    clip = write_clip(tmp_path / "still.mp4", frames=90, width=160, height=120,
                      draw=scene_drawer([MovingSquare(first=0, last=89, x=100, y=50, vx=0.1, vy=0)]))
    cfg = AppConfig.model_validate({
        "sources": [{"id": "door", "uri": str(clip), "realtime": True,
                     "zones": [{"name": "lobby", "polygon": [[80, 0], [160, 0], [160, 120], [80, 120]]}]}],
        "model": {"plugin": "fpnstream.devtools.blobs:blob_detector", "score_threshold": 0.5},
        "tracking": {"enabled": True}, "redis": {"prefix": "occ", "cluster": False, "spool_dir": None},
        "preview": {"fps": 0}})
    spec = resolve_sources(cfg.sources)[0]
    client = redis_proc.client()
    old, new = StreamWorker(cfg, redis_proc.url), StreamWorker(cfg, redis_proc.url)
    old.load(), new.load()

    def occupancy(worker) -> list[str]:
        return [ln for ln in worker.status().metrics.splitlines() if ln.startswith("fpnstream_zone_occupancy{")]

    try:
        old.assign(spec, uuid.uuid4().hex, True)
        deadline = time.monotonic() + 60
        while int(client.hget("occ:status:{door}", "published") or 0) < 30:
            assert time.monotonic() < deadline, "no frames published"
            time.sleep(0.1)
        assert any(ln.endswith(" 1.0") for ln in occupancy(old))
        old.unassign("door")
        new.assign(spec, uuid.uuid4().hex, False)
        while not any(ln.endswith(" 1.0") for ln in occupancy(new)):
            assert time.monotonic() < deadline + 60, "the new owner never counted the object"
            time.sleep(0.1)
        assert old.status().streams["door"].state.ended
        assert occupancy(old) == []  # the old owner counts it no more: one object, counted once
        while new.status().streams["door"].state != StreamState.FINISHED:
            assert time.monotonic() < deadline + 90, "the new owner did not finish"
            time.sleep(0.2)
        assert occupancy(new) == []  # a finished stream is watched by no one
    finally:
        old.close()
        new.close()


def test_a_video_file_over_http_taken_for_live_says_how_to_read_it_once(redis_proc, tmp_path):
    """By its URL it is live, so at its end it is opened again; the reconnect line says why
    and what to set. (A stand-in detector: what is detected does not matter here, and a
    real one would set torch's threads in whichever test process this test lands.)"""
    from fpnstream.devtools.feed import StandInDetector
    from fpnstream.devtools.synthetic import write_clip
    from tests.http_files import HttpFiles

    write_clip(tmp_path / "v.mp4", frames=6, width=96, height=64, container_options={"movflags": "+faststart"})
    stop = threading.Event()
    backend = backend_of(StandInDetector(0.001))
    with HttpFiles(tmp_path) as web:
        sink = RedisStreamSink(redis_proc.client(), "p", maxlen=0, model_name="stand-in")
        pipeline = Pipeline(backend, sink, MetricsObserver(Metrics()), BatchConfig(max_size=4, max_wait_ms=20), 4,
                            keep_open=True)
        (spec,) = resolve_sources([SourceConfig(uri=web.url("v.mp4"), id="v")])
        sink.claim("v", restart=True)
        pipeline.add_source(VideoDecoder(spec, DecodeConfig()))
        pipeline.start()
        try:
            deadline = time.monotonic() + 60
            while not pipeline.snapshot()["v"].reconnects and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            pipeline.wait(stop)
    report = pipeline.snapshot()["v"]
    assert report.live and report.reconnects >= 1
    assert report.error == ("source v: the stream ended (an http(s) source counts as live and is opened again; "
                            "a video file needs `live: false`)")
