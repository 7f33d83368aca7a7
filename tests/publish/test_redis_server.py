from fpnstream.publish.connection import EmbeddedRedis, connect


def test_embedded_redis_persists_and_is_shared(tmp_path):
    data = tmp_path / "redis"
    with EmbeddedRedis(data) as first:
        client = connect(first.url)
        client.xadd("k", {"a": "1"})
        # A second user of the same folder attaches instead of starting another server.
        second = EmbeddedRedis(data).start()
        assert second.port == first.port
        assert connect(second.url).xlen("k") == 1
        second.stop()  # attached users leave the server running
        assert client.ping()
    assert not (data / "redis.port").exists()
    # After a full stop, a new server reloads the data from the folder.
    with EmbeddedRedis(data) as again:
        assert connect(again.url).xrange("k")[0][1] == {b"a": b"1"}


def test_stale_port_file_is_ignored(tmp_path):
    data = tmp_path / "r"
    data.mkdir()
    (data / "redis.port").write_text("1")  # nothing of ours listens there
    with EmbeddedRedis(data) as r:
        assert r.port != 1 and connect(r.url).ping()
