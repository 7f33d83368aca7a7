"""The coordinator's Redis side against a real redis-server that goes away and comes back."""

from __future__ import annotations

import redis
from prometheus_client import CollectorRegistry

from fpnstream.observe.metrics import DriverMetrics
from fpnstream.runtime.status_board import StatusBoard
from tests.conftest import RedisProc


def test_control_channel_opened_while_redis_is_away_counts_commands_sent_after_it_is_back(tmp_path):
    server = RedisProc(tmp_path)
    port = server.port
    server.client().xadd("fpnstream:control", {"op": "remove", "stream": "before-the-job"})
    server.proc.kill()
    server.proc.wait()
    metrics = DriverMetrics(CollectorRegistry())
    board = StatusBoard(redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2), "fpnstream", metrics)
    try:
        board.start_control()  # must not raise: the job starts while Redis is away
        assert not board.up and board.read_commands() == []
        server = RedisProc(tmp_path, port=port)  # a fresh, empty server on the same port
        board.link._next_probe = 0.0  # probe now rather than after the backoff
        assert board.link.probe()
        assert board.read_commands() == []  # this read finds where the channel ends
        server.client().xadd("fpnstream:control", {"op": "remove", "stream": "after"})
        assert board.read_commands() == [{"op": "remove", "stream": "after"}]
    finally:
        server.stop()


def test_a_refused_call_is_not_an_outage_and_is_said_once(redis_proc, caplog):
    """A stream's status hash written over with a string: Redis answers WRONGTYPE to the
    status write, every tick. That is not Redis going away (the coordinator would stop
    claiming streams and flap readiness); the other rows are still written."""
    import logging

    from fpnstream.observe.metrics import DriverMetrics
    from fpnstream.runtime.status_board import StatusBoard
    from prometheus_client import CollectorRegistry

    client = redis_proc.client()
    client.set("sb:status:{bad}", "x")
    board = StatusBoard(client, "sb", DriverMetrics(CollectorRegistry()))
    with caplog.at_level(logging.WARNING):
        for tick in range(3):
            board.write_all({"bad": {"state": "failed", "decoded": tick}, "good": {"state": "streaming", "decoded": tick}})
    assert board.up
    assert client.hget("sb:status:{good}", "decoded") == b"2"
    said = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert said == ["Redis refused a coordinator call: HSET sb:status:{bad}: WRONGTYPE Operation against a key "
                    "holding the wrong kind of value"]
    assert board.starts_new_run("bad", restart=False) is True  # the claim then refuses it, saying why


def test_a_published_counter_that_is_no_integer_reads_as_unknown(redis_proc):
    """The end-of-job report reads it; a value written over by hand (the stream failed for
    it) must not end the job with an internal error."""
    client = redis_proc.client()
    client.hset("pc:status:{cam}", mapping={"published": "abc"})
    client.hset("pc:status:{ok}", mapping={"published": "7"})
    board = StatusBoard(client, "pc", DriverMetrics(CollectorRegistry()))
    assert board.published("cam") is None and board.published("ok") == 7


def test_redis_refusing_writes_is_one_outage_until_it_takes_them_again(redis_proc, caplog):
    """Redis out of memory (maxmemory reached) answers PING but refuses every write. A PING
    probe called it back at once, the next write took it down again: the coordinator logged
    an outage and a recovery twice a second, and readiness and the outage counter flapped.
    Now the probe makes the refused call again: one outage, over when Redis takes writes."""
    import logging

    client = redis_proc.client()
    metrics = DriverMetrics(CollectorRegistry())
    board = StatusBoard(client, "sb", metrics)
    rows = {"a": {"state": "streaming", "decoded": 1}}
    client.config_set("maxmemory", "1")
    try:
        with caplog.at_level(logging.INFO):
            board.write_all(rows)
            assert not board.up
            for _ in range(3):
                board.link._next_probe = 0.0  # probe now rather than after the backoff
                assert not board.link.probe(), "Redis still refuses writes"
                board.write_all(rows)
            assert client.ping() and client.hget("sb:status:{a}", "decoded") is None
            client.config_set("maxmemory", "0")
            board.link._next_probe = 0.0
            assert board.link.probe()
            assert client.hget("sb:status:{a}", "decoded") == b"1"  # the probe was the refused write
    finally:
        client.config_set("maxmemory", "0")
    assert board.up
    assert metrics.redis_outages._value.get() == 1 and metrics.redis_up._value.get() == 1
    said = [r.getMessage() for r in caplog.records if r.name == "fpnstream.runtime.redis_link"]
    assert len(said) == 2 and said[1].startswith("Redis is back"), said
    assert said[0].startswith("Redis refuses the coordinator's calls (SADD sb:streams: command not allowed when "
                              "used memory > 'maxmemory'"), said


def test_a_call_an_acl_refuses_is_not_an_outage(redis_proc, caplog):
    """An ACL that lets the job's user only read the workers hash: NOPERM for that one call,
    every tick. Taken for an outage it kept the coordinator off Redis for good (the probe
    repeats the refused call), and at the end of a run every open stream failed as if Redis
    were away. It is said once; every other call goes on."""
    import logging

    admin = redis_proc.client()
    admin.execute_command("ACL", "SETUSER", "job", "on", ">pw", "resetkeys", "~sb:status:*", "~sb:streams",
                          "%R~sb:workers", "+@all")
    client = redis.Redis(port=redis_proc.port, username="job", password="pw")
    board = StatusBoard(client, "sb", DriverMetrics(CollectorRegistry()))
    from fpnstream.core.reports import WorkerInfo

    with caplog.at_level(logging.WARNING):
        for tick in range(3):
            board.record_worker(0, WorkerInfo(incarnation="i", model="m", device="cpu", host="h", pid=1))
            board.write_all({"a": {"state": "streaming", "decoded": tick}})
    assert board.up
    assert admin.hget("sb:status:{a}", "decoded") == b"2" and not admin.exists("sb:workers")
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith("Redis refused a coordinator call: ") and "no permissions" in said[0], said
