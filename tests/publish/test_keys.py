"""Key layout: a stream's keys share a Redis Cluster hash slot; keys of the layout before
hash tags are renamed in place (real redis-server)."""

from __future__ import annotations

from redis.crc import key_slot

from fpnstream.publish.control import migrate_legacy_keys
from fpnstream.publish.keys import (
    events_key, keys_of_stream, legacy_key, preview_key, status_key, stream_id_of, stream_key, stream_keys_glob,
    streams_key,
)


def test_a_streams_keys_share_one_hash_slot_and_name_their_stream():
    for sid in ("cam", "127.0.0.1-test", "a.b_c-9"):
        keys = [stream_key("p", sid), status_key("p", sid), events_key("p", sid), preview_key("p", sid)]
        assert len({key_slot(k.encode()) for k in keys}) == 1
        assert {stream_id_of(k) for k in keys} == {sid} and set(keys) == set(keys_of_stream("p", sid))
    # different streams spread over slots, whatever the prefix
    assert len({key_slot(stream_key("p", f"cam{i}").encode()) for i in range(50)}) > 40
    assert stream_id_of("p:control") is None
    assert legacy_key("p:detections:{cam}") == "p:detections:cam"


def test_scan_pattern_matches_only_that_kind_of_key(redis_proc):
    client = redis_proc.client()
    client.xadd(stream_key("p", "a"), {"x": 1})
    client.xadd(events_key("p", "a"), {"x": 1})
    client.xadd(stream_key("px", "b"), {"x": 1})
    found = {k.decode() for k in client.scan_iter(match=stream_keys_glob(stream_key, "p"))}
    assert found == {"p:detections:{a}"}


def test_legacy_keys_are_renamed_keeping_data_and_consumer_groups(redis_proc):
    client = redis_proc.client()
    client.sadd(streams_key("old"), "cam", "fresh")
    client.xadd("old:detections:cam", {"v": "1"})
    client.xgroup_create("old:detections:cam", "alerts", id="0")
    client.hset("old:status:cam", mapping={"last_frame": 7, "run": 2})
    client.xadd("old:events:cam", {"v": "1"})
    client.hset(status_key("old", "fresh"), "last_frame", 3)  # already in the new layout
    client.hset("old:status:fresh", "last_frame", 99)  # an old copy must not overwrite it

    assert migrate_legacy_keys(client, "old") == 3
    assert client.hget(status_key("old", "cam"), "last_frame") == b"7"
    assert client.xlen(stream_key("old", "cam")) == 1 and client.xlen(events_key("old", "cam")) == 1
    assert client.xinfo_groups(stream_key("old", "cam"))[0]["name"] == b"alerts"
    assert not client.exists("old:detections:cam", "old:status:cam", "old:events:cam")
    assert client.hget(status_key("old", "fresh"), "last_frame") == b"3"
    assert migrate_legacy_keys(client, "old") == 0  # nothing left to do
