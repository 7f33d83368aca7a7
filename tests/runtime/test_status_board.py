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
