"""The fault matrix on the path users run: `fpnstream run` on Ray, a real redis-server, real
video. Each test asserts what a consumer sees: every frame of a file exactly once and in
order (and, where it matters, which run it belongs to).

Rows not here: worker SIGKILL and node removal (tests/cluster/test_cluster.py), an RTSP server
killed and restarted (tests/e2e/test_reliability.py), both on Ray too.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from fpnstream.publish.schema import decode_entry
from fpnstream.devtools.synthetic import write_clip
from tests.faults import exactly_once, http, longest_pause_s, metric, record
from tests.conftest import SMALL_MODEL, RedisProc, free_port, run_cli, start_run, wait_for

FAST = ["--model", SMALL_MODEL, "--min-size", "64", "--max-size", "128"]


def entries(client, key: str) -> list[dict]:
    return [decode_entry(f) for _, f in client.xrange(key)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("faults") / "f.mp4", frames=240, width=96, height=64, seed=3)


def test_redis_killed_and_restarted_twice_on_ray(tmp_path, small_checkpoint):
    """The driver keeps running through two Redis outages: /readyz says not ready while Redis
    is away, the outage is counted, results wait in the workers' buffer (and disk spool) and
    land exactly once."""
    # Played at its recorded rate (16 s), so both outages fall inside the run however fast
    # this machine detects; unpaced, a fast worker finished during the first outage.
    n = 400
    clip = write_clip(tmp_path / "paced.mp4", frames=n, width=96, height=64, fps=25, seed=3)
    data = tmp_path / "redis-data"
    data.mkdir()
    persist = ("--appendonly", "yes", "--appendfsync", "always")
    server = RedisProc(data, *persist)
    port, mport = server.port, free_port()
    cfg = tmp_path / "small-buffer.yaml"
    cfg.write_text(f"redis:\n  buffer_frames: 8\n  spool_dir: {tmp_path / 'spool'}\n  outage_wait_s: 60\n"
                   f"sources:\n  - id: f\n    uri: {clip}\n    realtime: true\n")
    proc = start_run("--config", str(cfg), *FAST, "--weights", str(small_checkpoint),
                     "--redis-url", server.url, "--metrics-port", str(mport))
    key = "fpnstream:detections:{f}"
    seen_not_ready = False
    try:
        for outage, at in enumerate((25, 150)):
            wait_for(lambda: server.client().xlen(key) >= at, proc, what=f"{at} frames")
            wait_for(lambda: http(f"http://127.0.0.1:{mport}/readyz")[0] == 200, proc, timeout=10, what="ready")
            server.proc.kill()
            server.proc.wait()
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:  # detection goes on meanwhile
                seen_not_ready |= http(f"http://127.0.0.1:{mport}/readyz")[0] == 503
                time.sleep(0.2)
            text = http(f"http://127.0.0.1:{mport}/metrics")[1]
            assert metric(text, "fpnstream_redis_up") == 0 and metric(text, "fpnstream_redis_outages_total") == outage + 1
            server = RedisProc(data, *persist, port=port)
        _, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
        server.stop()
    assert proc.returncode == 0, err[-3000:]
    assert seen_not_ready, "/readyz should answer 503 while Redis is away"
    assert "Redis unreachable from the coordinator" in err and "Redis is back" in err
    assert "Traceback" not in err and "internal error" not in err
    # The outages overflowed the 8-frame memory buffer into the spool; drained, its folders went.
    assert (tmp_path / "spool").is_dir() and not list((tmp_path / "spool").iterdir())
    restarted = RedisProc(data, *persist, port=port)
    try:
        frames = [d["frame"] for d in entries(restarted.client(), key)]
        record("Redis killed and restarted (twice)", **exactly_once(frames, n),
               longest_pause_s=longest_pause_s(restarted.client(), key))
    finally:
        restarted.stop()
    assert frames == list(range(n))


def test_driver_sigkill_then_same_command_resumes_then_a_new_run(tmp_path, clip, redis_proc, small_checkpoint):
    """A crashed driver run again continues the same run after the last published frame;
    running it once more after it finished starts run 2 from frame 0."""
    client = redis_proc.client()
    args = ["--source", f"f={clip}", *FAST, "--weights", str(small_checkpoint), "--redis-url", redis_proc.url,
            "--metrics-port", "0"]
    key = "fpnstream:detections:{f}"
    proc = start_run(*args)
    try:
        wait_for(lambda: client.xlen(key) >= 40, proc, what="first frames")
        proc.send_signal(signal.SIGKILL)  # a crash: nothing is drained or written on the way out
        proc.wait(10)
    finally:
        proc.kill()
    cut = client.xlen(key)
    assert cut < 240
    again = run_cli("run", *args, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumes its run at frame" in again.stderr
    # The killed job's lease on the prefix was not renewed any more: taken over, not waited out.
    assert "stopped renewing its lease; this job takes over" in again.stderr
    docs = entries(client, key)
    record("driver SIGKILL, same command again", **exactly_once([d["frame"] for d in docs], 240), cut_at=cut,
           longest_pause_s=longest_pause_s(client, key))
    assert [d["frame"] for d in docs] == list(range(240)), "no duplicate, no gap across the crash"
    assert {d["run"] for d in docs} == {1}
    status = {k.decode(): v.decode() for k, v in client.hgetall("fpnstream:status:{f}").items()}
    assert status["state"] == "finished" and status["run"] == "1" and status["published"] == "240"

    third = run_cli("run", *args, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    docs = entries(client, key)
    assert [(d["run"], d["frame"]) for d in docs] == [(1, i) for i in range(240)] + [(2, i) for i in range(240)]


def test_worker_sigstop_longer_than_poll_budget_then_sigcont(tmp_path, redis_proc, small_checkpoint):
    """A frozen worker misses its status polls: its streams move (fenced); when it wakes up
    it finds them owned elsewhere and stops feeding them. Every frame exactly once."""
    d = tmp_path / "clips"
    d.mkdir()
    clips = [write_clip(d / f"s{i}.mp4", frames=150, width=96, height=64, seed=10 + i) for i in range(2)]
    cfg = tmp_path / "fast-polls.yaml"
    cfg.write_text("ray:\n  poll_interval_s: 1\n  poll_misses: 3\n")
    client = redis_proc.client()
    srcs = [a for p in clips for a in ("--source", str(p))]
    proc = start_run("--config", str(cfg), *srcs, *FAST, "--weights", str(small_checkpoint), "--num-actors", "2",
                     "--redis-url", redis_proc.url, "--redis-prefix", "stop", "--metrics-port", "0")
    try:
        wait_for(lambda: client.hlen("stop:workers") == 2 and sum(client.xlen(f"stop:detections:{{{p.stem}}}") for p in clips) >= 30,
                 proc, what="first frames")
        victim = json.loads(client.hget("stop:workers", "0"))["pid"]
        os.kill(victim, signal.SIGSTOP)
        try:
            wait_for(lambda: any(client.hget(f"stop:status:{{{p.stem}}}", "last_move") == b"worker 0 unresponsive" for p in clips),
                     proc, timeout=60, what="streams moved off the frozen worker")
        finally:
            os.kill(victim, signal.SIGCONT)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "worker 0 is down (no answer to 3 status polls)" in err
    for p in clips:
        frames = [e["frame"] for e in entries(client, f"stop:detections:{{{p.stem}}}")]
        record(f"worker SIGSTOP past the poll budget, then SIGCONT ({p.stem})", **exactly_once(frames, 150),
               longest_pause_s=longest_pause_s(client, f"stop:detections:{{{p.stem}}}"))
    for p in clips:
        assert [e["frame"] for e in entries(client, f"stop:detections:{{{p.stem}}}")] == list(range(150)), p.stem


def test_hung_detector_is_detected_moved_and_restarted(tmp_path, clip, redis_proc, small_checkpoint):
    """A failpoint makes a batch never return while the worker keeps answering polls: the
    watchdog moves its stream, Ray restarts the worker, and the file completes exactly once."""
    cfg = tmp_path / "watchdog.yaml"
    cfg.write_text("ray:\n  poll_interval_s: 1\n  hang_floor_s: 4\n")
    marker = tmp_path / "hung-once"
    client = redis_proc.client()
    mport = free_port()
    proc = start_run("--config", str(cfg), "--source", f"f={clip}", *FAST, "--weights", str(small_checkpoint),
                     "--redis-url", redis_proc.url, "--redis-prefix", "hang", "--metrics-port", str(mport),
                     env={"FPNSTREAM_FAILPOINTS": f"detector.hang:after=10:once={marker}"})
    try:
        wait_for(lambda: client.hget("hang:status:{f}", "last_move") == b"worker 0 hung", proc, timeout=120,
                 what="the watchdog to move the stream")
        assert metric(http(f"http://127.0.0.1:{mport}/metrics")[1], "fpnstream_worker_hangs_total") == 1
        listing = run_cli("streams", "--redis-url", redis_proc.url, "--redis-prefix", "hang", "list")
        assert "worker 0 hung" in listing.stdout
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert marker.exists(), "the failpoint fired"
    assert "worker 0 is hung" in err and "restarting it" in err
    frames = [e["frame"] for e in entries(client, "hang:detections:{f}")]
    record("detector hang (failpoint)", **exactly_once(frames, 240), longest_pause_s=longest_pause_s(client, "hang:detections:{f}"))
    assert frames == list(range(240))


def test_a_batch_that_compiles_past_the_hang_floor_is_not_taken_for_a_hang(tmp_path, clip, redis_proc, small_checkpoint):
    """`--compile` without `model.warmup_sizes`: the first batches compile (inductor takes
    seconds to minutes on a CPU), far past a 2 s hang floor. The worker says what it
    compiles, the watchdog gives those batches `ray.hang_compile_floor_s`: no hang, no
    restart, every frame once. (Before, such a worker was restarted as hung, and the
    restarted worker compiled again.) Batches of one: one graph set to compile, not two
    (a cold compile of both took ~97 s of the suite's time)."""
    cfg = tmp_path / "compile.yaml"
    cfg.write_text("ray:\n  poll_interval_s: 1\n  hang_floor_s: 2\n  hang_factor: 1\n")
    client = redis_proc.client()
    proc = start_run("--config", str(cfg), "--source", f"f={clip}", *FAST, "--compile", "--batch-size", "1", "--weights",
                     str(small_checkpoint), "--redis-url", redis_proc.url, "--redis-prefix", "compile",
                     "--metrics-port", "0")
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert err.count("compiling the model for 96x64, batch of 1") == 1, err[-3000:]  # said once
    assert "hung" not in err and "restarting" not in err, err[-3000:]
    assert not client.hget("compile:status:{f}", "last_move")  # never moved
    frames = [e["frame"] for e in entries(client, "compile:detections:{f}")]
    assert frames == list(range(240))


def _run_with_failpoint(tmp_path, clip, redis_proc, checkpoint, prefix: str, failpoint: str) -> str:
    """`fpnstream run` of the one file stream with `failpoint` set to fire once; its stderr,
    after checking that it fired and the job ended well."""
    marker = tmp_path / "fired"
    proc = start_run("--config", str(_fast_polls(tmp_path)), "--source", f"f={clip}", *FAST, "--weights", str(checkpoint),
                     "--redis-url", redis_proc.url, "--redis-prefix", prefix, "--metrics-port", "0",
                     env={"FPNSTREAM_FAILPOINTS": f"{failpoint}:once={marker}"})
    try:
        _, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert marker.exists(), "the failpoint fired"
    return err


def test_a_claim_whose_reply_was_lost_goes_on_in_the_run_it_started(tmp_path, clip, redis_proc, small_checkpoint):
    """The worker's claim of a new run is made in Redis, then its reply is lost (a Redis
    timeout right after the script ran). The coordinator's next claim goes on in that run:
    run 1, every frame once. Before, it started run 2 for the one start."""
    client = redis_proc.client()
    err = _run_with_failpoint(tmp_path, clip, redis_proc, small_checkpoint, "lost", "claim.reply_lost")
    assert "stream f not assigned yet: failpoint claim.reply_lost fired" in err, err[-3000:]
    assert client.hget("lost:status:{f}", "run") == b"1"
    docs = entries(client, "lost:detections:{f}")
    assert [d["frame"] for d in docs] == list(range(240)) and {d["run"] for d in docs} == {1}


def test_detector_exception_restarts_the_worker_and_loses_nothing(tmp_path, clip, redis_proc, small_checkpoint):
    """A batch that raises (a bug, an out-of-memory) stops that worker's pipeline. The worker
    still answers polls, so neither death nor hang is seen: its status says why it stopped,
    and the coordinator restarts it and moves its stream. Before, the job waited forever."""
    client = redis_proc.client()
    err = _run_with_failpoint(tmp_path, clip, redis_proc, small_checkpoint, "crash", "detector.crash:after=10")
    assert "worker 0 stopped working (RuntimeError: failpoint detector.crash fired)" in err and "restarting it" in err
    assert client.hget("crash:status:{f}", "last_move") == b"worker 0 failed"
    frames = [e["frame"] for e in entries(client, "crash:detections:{f}")]
    record("detector exception (failpoint)", **exactly_once(frames, 240),
           longest_pause_s=longest_pause_s(client, "crash:detections:{f}"))
    assert frames == list(range(240))


def test_a_detector_that_fails_on_every_batch_fails_the_stream_not_for_ever(tmp_path, clip, redis_proc, small_checkpoint):
    """Every batch raises: each restarted worker fails at once again. The coordinator moved
    the stream and restarted the worker for ever (the job never ended, the stream waited with
    no error). Now, after 3 failures in a row with none of its frames published in between,
    the stream fails with the worker's error and the job ends."""
    client = redis_proc.client()
    proc = start_run("--config", str(_fast_polls(tmp_path)), "--source", f"f={clip}", *FAST, "--weights",
                     str(small_checkpoint), "--redis-url", redis_proc.url, "--redis-prefix", "loop", "--metrics-port", "0",
                     env={"FPNSTREAM_FAILPOINTS": "detector.crash:after=0"})
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err and "internal error" not in err, err[-3000:]
    why = ("its worker failed 3 times in a row before it published a frame; "
           "last: RuntimeError: failpoint detector.crash fired")
    assert why in err and "1 stream(s) failed" in err, err[-3000:]
    assert client.hget("loop:status:{f}", "state") == b"failed"
    assert why in client.hget("loop:status:{f}", "error").decode()
    assert client.xlen("loop:detections:{f}") == 0
    record("detector raising on every batch (failpoint)", restarts_before_the_stream_failed=err.count("restarting it"),
           exit_code=proc.returncode)


def _fast_polls(tmp_path):
    cfg = tmp_path / "fast-polls.yaml"
    cfg.write_text("ray:\n  poll_interval_s: 1\n")
    return cfg


def test_a_stream_key_written_over_with_another_type_fails_that_stream_only(tmp_path, clip, redis_proc, small_checkpoint):
    """Someone overwrites a stream's keys with a string: before a claim (b's entries key)
    and mid-run (c's status hash). Redis answers WRONGTYPE to every write there, which was
    buffered and retried as an outage for ever; the coordinator took it for Redis going
    down. Now that stream fails with the reason, and the job goes on and ends."""
    client = redis_proc.client()
    client.set("over:detections:{b}", "someone else's")
    client.set("over:status:{d}", "someone else's")  # also read before the claim (run or resume?)
    cfg = tmp_path / "over.yaml"
    cfg.write_text("ray:\n  poll_interval_s: 1\nsources:\n"
                   + "".join(f"  - id: {sid}\n    uri: {clip}\n    realtime: true\n" for sid in "abcd"))
    proc = start_run("--config", str(cfg), *FAST, "--weights", str(small_checkpoint), "--redis-url", redis_proc.url,
                     "--redis-prefix", "over", "--metrics-port", "0")
    try:
        wait_for(lambda: client.xlen("over:detections:{c}") >= 30, proc, what="c's first frames")
        client.set("over:status:{c}", "overwritten")  # SET replaces a key of any type
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err and "unreachable" not in err, err[-3000:]
    assert "stream b: over:detections:{b} holds a string, not a stream; delete or rename that key" in err
    assert "stream c: over:status:{c} holds a string, not a hash; delete or rename that key" in err
    assert "stream d: over:status:{d} holds a string, not a hash; delete or rename that key" in err
    assert "3 stream(s) failed" in err
    assert client.get("over:status:{d}") == b"someone else's" and not client.exists("over:detections:{d}")
    assert [e["frame"] for e in entries(client, "over:detections:{a}")] == list(range(240))
    assert client.hget("over:status:{a}", "state") == b"finished"
    b_status = {k.decode(): v.decode() for k, v in client.hgetall("over:status:{b}").items()}
    assert b_status["state"] == "failed" and "holds a string" in b_status["error"]
    assert client.get("over:detections:{b}") == b"someone else's"
    assert client.get("over:status:{c}") == b"overwritten"
    c_frames = [e["frame"] for e in entries(client, "over:detections:{c}")]
    record("a stream's keys written over with a string (before its claim; mid-run)",
           **exactly_once([e["frame"] for e in entries(client, "over:detections:{a}")], 240),
           mid_run_stream_published_before=len(c_frames), exit_code=proc.returncode)
    assert 30 <= len(c_frames) < 240 and c_frames == list(range(len(c_frames)))


def test_a_second_job_on_the_same_prefix_is_refused_and_the_first_goes_on(tmp_path, clip, redis_proc, small_checkpoint):
    """Two jobs on one prefix would share the control channel and re-claim each other's
    streams for ever. The second is refused in one line, naming the first; the first is
    untouched, and once it ended the prefix is free again (its lease key is gone: the only
    thing that refused the second)."""
    client = redis_proc.client()
    cfg = tmp_path / "first.yaml"
    cfg.write_text(f"sources:\n  - id: f\n    uri: {clip}\n    realtime: true\n")
    common = [*FAST, "--weights", str(small_checkpoint), "--redis-url", redis_proc.url, "--redis-prefix", "one",
              "--metrics-port", "0"]
    first = start_run("--config", str(cfg), *common)
    try:
        wait_for(lambda: client.xlen("one:detections:{f}") >= 10, first, what="the first job's frames")
        second = run_cli("run", "--source", f"g={clip}", *common, timeout=120)
        assert first.poll() is None, "the first job is still running"
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert second.returncode == 2, second.stderr[-3000:]
    lines = [ln for ln in second.stderr.splitlines() if "another fpnstream job" in ln]
    assert len(lines) == 1 and f"pid {first.pid}" in lines[0] and "'one'" in lines[0], second.stderr[-3000:]
    assert "Traceback" not in second.stderr
    assert not client.exists("one:detections:{g}") and not client.exists("one:status:{g}")
    assert first.returncode == 0, err[-3000:]
    assert [e["frame"] for e in entries(client, "one:detections:{f}")] == list(range(240))
    assert not client.exists("one:job")  # released at the end
    record("a second job on the same prefix", second_exit_code=second.returncode,
           **exactly_once([e["frame"] for e in entries(client, "one:detections:{f}")], 240))


def test_redis_gone_for_good_at_the_end_of_a_run_ends_the_job_with_the_reason(tmp_path, small_checkpoint):
    """Redis dies and never comes back while a file's frames wait to be published. The
    workers' pipelines stay open for streams the coordinator may still give them, so their
    publishers' end-of-run wait never started and the job waited for ever. Now the job gives
    up `redis.outage_wait_s` after only publishing was left: one line, exit 1, the frames
    published before the outage are all there, in order."""
    n = 100
    clip = write_clip(tmp_path / "paced.mp4", frames=n, width=96, height=64, fps=25, seed=4)
    data = tmp_path / "redis-data"
    data.mkdir()
    persist = ("--appendonly", "yes", "--appendfsync", "always")  # what landed, to read after the kill
    server = RedisProc(data, *persist)
    cfg = tmp_path / "gone.yaml"
    cfg.write_text("ray:\n  poll_interval_s: 1\nredis:\n  outage_wait_s: 3\n  socket_timeout_s: 2\n"
                   f"sources:\n  - id: f\n    uri: {clip}\n    realtime: true\n")
    proc = start_run("--config", str(cfg), *FAST, "--weights", str(small_checkpoint), "--redis-url", server.url,
                     "--metrics-port", "0")
    try:
        wait_for(lambda: server.client().xlen("fpnstream:detections:{f}") >= 20, proc, what="20 frames")
        killed_at = time.monotonic()
        server.proc.kill()
        server.proc.wait()
        _, err = proc.communicate(timeout=180)
        ended_after_s = time.monotonic() - killed_at
    finally:
        proc.kill()
        server.stop()
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err and "internal error" not in err, err[-3000:]
    assert "Redis unreachable for 3 s (redis.outage_wait_s) at the end of the run" in err, err[-3000:]
    assert "1 stream(s) failed" in err, err[-3000:]
    kept = RedisProc(data, *persist)
    try:
        frames = [e["frame"] for e in entries(kept.client(), "fpnstream:detections:{f}")]
    finally:
        kept.stop()
    record("Redis killed for good near the end of a run", published_before_the_kill=len(frames),
           ended_after_s=round(ended_after_s, 1), exit_code=proc.returncode)
    assert len(frames) >= 20 and frames == list(range(len(frames)))


def test_redis_restarted_without_its_data_then_the_worker_killed_repeats_no_frame(tmp_path, small_checkpoint):
    """Redis restarts empty mid-run (no persistence), then the worker is SIGKILLed and the
    stream is claimed again. The claim's record (owner, run, resume point) went with the
    data; the next claim took the stream for new and started it over at frame 0, so ~100
    frames were published twice. Now the writer puts its claim back with its next batch:
    the new claim resumes after the last frame published, in the same run."""
    n = 200
    clip = write_clip(tmp_path / "paced.mp4", frames=n, width=96, height=64, fps=25, seed=5)
    server = RedisProc(tmp_path)  # keeps nothing: a restart loses everything
    port = server.port
    cfg = tmp_path / "lost.yaml"
    cfg.write_text(f"sources:\n  - id: f\n    uri: {clip}\n    realtime: true\n")
    proc = start_run("--config", str(cfg), *FAST, "--weights", str(small_checkpoint), "--redis-url", server.url,
                     "--metrics-port", "0")
    key, status = "fpnstream:detections:{f}", "fpnstream:status:{f}"
    try:
        wait_for(lambda: server.client().xlen(key) >= 40 and server.client().hlen("fpnstream:workers") == 1, proc,
                 what="first frames")
        victim = json.loads(server.client().hget("fpnstream:workers", "0"))["pid"]
        server.stop()
        server = RedisProc(tmp_path, port=port)
        client = server.client()
        wait_for(lambda: client.hget(status, "run") == b"1" and client.xlen(key) >= 5, proc, timeout=60,
                 what="the claim written back")
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=240)
        frames = [(e["run"], e["frame"]) for e in entries(client, key)]
    finally:
        proc.kill()
        server.stop()
    assert proc.returncode == 0, err[-3000:]
    assert "the job lease fpnstream:job was gone while this job held it" in err, err[-3000:]
    assert "worker 0 is down" in err and "resumes its run at frame" in err, err[-3000:]
    first = frames[0][1]
    indices = [f for _, f in frames]
    record("Redis restarted without its data, then the worker SIGKILLed", first_frame_after_the_restart=first,
           published=len(indices), lost_after_the_restart=len(set(range(first, n)) - set(indices)),
           duplicated=len(indices) - len(set(indices)))
    assert first > 0 and frames == [(1, i) for i in range(first, n)]


def test_redis_emptied_while_the_streams_worker_is_frozen_the_move_keeps_the_run(tmp_path, redis_proc, small_checkpoint):
    """Redis loses everything (FLUSHALL, as a restart without persistence) while the stream's
    worker is frozen, so no writer can put the claim back before the stream is moved. The
    new claim found no record and started the stream over at frame 0; now it goes on in the
    run the coordinator knows of, after the frames it saw published (at most a poll's worth
    is published again), and the frozen worker, when it wakes, is fenced."""
    n = 200
    clip = write_clip(tmp_path / "paced.mp4", frames=n, width=96, height=64, fps=25, seed=6)
    cfg = tmp_path / "frozen.yaml"
    cfg.write_text("ray:\n  poll_interval_s: 1\n  poll_misses: 3\n"
                   f"sources:\n  - id: f\n    uri: {clip}\n    realtime: true\n")
    client = redis_proc.client()
    proc = start_run("--config", str(cfg), *FAST, "--weights", str(small_checkpoint), "--num-actors", "2",
                     "--redis-url", redis_proc.url, "--redis-prefix", "frz", "--metrics-port", "0")
    key, status = "frz:detections:{f}", "frz:status:{f}"
    try:
        wait_for(lambda: client.hlen("frz:workers") == 2 and client.xlen(key) >= 40, proc, what="first frames")
        owner = client.hget(status, "worker").decode()
        victim = json.loads(client.hget("frz:workers", owner))["pid"]
        os.kill(victim, signal.SIGSTOP)
        try:
            before = client.xlen(key)
            client.flushall()
            wait_for(lambda: client.hget(status, "last_move") == f"worker {owner} unresponsive".encode(), proc,
                     timeout=60, what="the stream moved off the frozen worker")
        finally:
            os.kill(victim, signal.SIGCONT)
        _, err = proc.communicate(timeout=240)
        frames = [(e["run"], e["frame"]) for e in entries(client, key)]
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "Redis had no record of its run 1 (restarted without its data?)" in err, err[-3000:]
    first = frames[0][1]
    record("Redis emptied while the stream's worker was frozen, then the stream moved",
           published_before_the_loss=before, resumed_at=first, published_again=max(0, before - first),
           duplicated_after_the_loss=len(frames) - len({f for _, f in frames}))
    assert 0 < first <= before and frames == [(1, i) for i in range(first, n)]


def test_redis_out_of_memory_mid_run_is_one_outage_and_loses_nothing(tmp_path, redis_proc, small_checkpoint):
    """Redis at its maxmemory answers reads and PING but refuses every write. The workers
    buffer their results and retry; the coordinator counts one outage for as long as it
    lasts. Before, its PING probe called Redis back at once and the next write took it down
    again: an outage and a recovery logged twice a second, readiness and the outage counter
    flapping, while not one write was taken."""
    n = 150
    clip = write_clip(tmp_path / "paced.mp4", frames=n, width=96, height=64, fps=25, seed=7)
    cfg = tmp_path / "oom.yaml"
    cfg.write_text(f"sources:\n  - id: f\n    uri: {clip}\n    realtime: true\n")
    mport = free_port()
    proc = start_run("--config", str(cfg), *FAST, "--weights", str(small_checkpoint), "--redis-url", redis_proc.url,
                     "--metrics-port", str(mport))
    key, client = "fpnstream:detections:{f}", redis_proc.client()
    seen = []
    try:
        wait_for(lambda: client.xlen(key) >= 40, proc, what="first frames")
        client.config_set("maxmemory", "1")
        for _ in range(5):  # the outage as a scrape sees it, once a second
            time.sleep(1)
            text = http(f"http://127.0.0.1:{mport}/metrics")[1]
            seen.append((metric(text, "fpnstream_redis_up"), metric(text, "fpnstream_redis_outages_total")))
        written_meanwhile = client.xlen(key)
        client.config_set("maxmemory", "0")
        _, err = proc.communicate(timeout=240)
        frames = [e["frame"] for e in entries(client, key)]
    finally:
        proc.kill()
        client.config_set("maxmemory", "0")
    assert proc.returncode == 0, err[-3000:]
    record("Redis out of memory (maxmemory) for 5 s", **exactly_once(frames, n), longest_pause_s=longest_pause_s(client, key),
           outages_counted=max(o for _, o in seen))
    assert "Traceback" not in err and "internal error" not in err
    assert "publishing to Redis failed: command not allowed when used memory > 'maxmemory'" in err, err[-3000:]
    assert err.count("Redis refuses the coordinator's calls") == 1 and err.count("Redis is back") == 1, err[-3000:]
    assert seen[1:] == [(0, 1)] * 4, seen  # down for the whole outage, counted once
    assert written_meanwhile < n and frames == list(range(n))


def test_redis_failover_behind_one_address_lands_every_frame_on_the_new_primary(tmp_path, small_checkpoint):
    """The job talks to one address in front of a primary and its replica (a managed Redis's
    DNS name, a proxy). Mid-run the primary hands over (`FAILOVER`: the replica has caught
    up, is promoted, the old primary becomes its replica) and the address moves to the new
    primary. Connections made before stay on the old one, which answers READONLY to every
    write: redis-py kept them, so the workers buffered and retried against it and the job
    never ended. Now such a connection is dropped and the call made again on a new one."""
    from tests.tcp_proxy import TcpProxy

    n = 150
    clip = write_clip(tmp_path / "paced.mp4", frames=n, width=96, height=64, fps=25, seed=9)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    old, new = RedisProc(tmp_path / "a"), RedisProc(tmp_path / "b")
    new.client().replicaof("127.0.0.1", old.port)
    wait_for(lambda: new.client().info("replication").get("master_link_status") == "up", timeout=30,
             what="the replica in sync")
    proxy = TcpProxy(old.port)
    cfg = tmp_path / "failover.yaml"
    cfg.write_text(f"sources:\n  - id: f\n    uri: {clip}\n    realtime: true\n")
    proc = start_run("--config", str(cfg), *FAST, "--weights", str(small_checkpoint), "--redis-url", proxy.url,
                     "--metrics-port", "0")
    key = "fpnstream:detections:{f}"
    try:
        wait_for(lambda: old.client().xlen(key) >= 40, proc, what="first frames")
        old.client().execute_command("FAILOVER", "TO", "127.0.0.1", new.port)
        wait_for(lambda: new.client().info("replication")["role"] == "master", timeout=30, what="the failover")
        proxy.target = new.port
        before = new.client().xlen(key)
        _, err = proc.communicate(timeout=150)
        frames = [e["frame"] for e in entries(new.client(), key)]
    finally:
        proc.kill()
        proxy.close()
        old.stop()
        new.stop()
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "internal error" not in err
    record("Redis failover behind one address (FAILOVER, then the address moved)", **exactly_once(frames, n),
           on_the_new_primary_at_the_failover=before)
    assert 40 <= before < n and frames == list(range(n))
