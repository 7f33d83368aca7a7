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
