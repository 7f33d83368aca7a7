"""The control channel's writer side against a real redis-server: only ${VAR} passwords travel."""

from __future__ import annotations

import pytest

from fpnstream.core.errors import ConfigError
from fpnstream.publish.control import expand_env, send_add, send_remove


@pytest.mark.parametrize("uri", [
    "rtsp://viewer:secret@cam/x",
    "rtsp://viewer:pa55/w@127.0.0.1:1/x",  # a raw "/" ended the user-info for urlsplit
    "rtsp://${CAM_USER}:campass@cam/x",  # an env ref for the user only
    "rtsp://viewer:${CAM_PASS}literal@cam/x",
    "rtsp://viewer:p@ss@cam/x",
    "srt://10.0.0.5:9000?mode=caller&passphrase=hunter2hunter2",  # SRT's encryption key
    "rtsp://cam/x?user=viewer&password=hunter2",
    "https://cams.example/x.m3u8?token=abc&passphrase=${OK}",  # one clear secret is enough to refuse
    "rtmp://media.local/live/Str3am-Key",  # an RTMP stream key
])
def test_a_literal_password_is_never_written_to_redis(redis_proc, uri):
    client = redis_proc.client()
    with pytest.raises(ConfigError, match="refusing to send a password"):
        send_add(client, "ctl", "cam", uri, None)
    assert not client.exists("ctl:control")


@pytest.mark.parametrize("uri", ["rtsp://viewer:${CAM_PASS}@cam/x", "rtsp://${U}:${P}@cam/x", "rtsp://cam/x",
                                 "rtsp://viewer@cam/x", "/data/a.mp4", "srt://h:9000?mode=caller&passphrase=${SRT_PASS}",
                                 "rtmp://media.local/live/${STREAM_KEY}", "rtmp://media.local/live"])
def test_env_refs_and_no_password_are_sent(redis_proc, uri):
    client = redis_proc.client()
    send_add(client, "ctl2", "cam", uri, None)
    (_, fields), = client.xrange("ctl2:control")
    assert fields[b"uri"] == uri.encode()
    client.delete("ctl2:control")


def test_removing_a_stream_the_job_never_had_is_refused(redis_proc):
    client = redis_proc.client()
    for sid in ["", "typo"]:
        with pytest.raises(ConfigError, match="no stream"):
            send_remove(client, "ctl3", sid)
    assert not client.exists("ctl3:control")
    client.sadd("ctl3:streams", "cam")  # a stream the job has written a status for
    send_remove(client, "ctl3", "cam")
    assert client.xlen("ctl3:control") == 1


def test_expanding_an_unset_variable_is_a_config_error_without_the_password():
    with pytest.raises(ConfigError, match=r"source rtsp://\*\*\*@cam/x refers to \$\{NOPE\}, which is not set"):
        expand_env("rtsp://admin:${NOPE}@cam/x", {})
    assert expand_env("rtsp://admin:${P}@cam/x", {"P": "s3"}) == "rtsp://admin:s3@cam/x"


def test_status_written_over_with_bytes_that_are_not_utf8_still_lists(redis_proc):
    from fpnstream.publish.control import read_status

    client = redis_proc.client()
    client.sadd("ctl4:streams", b"cam", b"\xff\xfe")
    client.hset("ctl4:status:{cam}", mapping={"state": b"\xc3\x28", "owner": "tok"})
    rows = read_status(client, "ctl4")
    assert [r["id"] for r in rows] == ["cam", "\ufffd\ufffd"]
    assert rows[0] == {"id": "cam", "state": "\ufffd("}


def test_an_add_sent_with_live_reaches_the_job_as_sent(redis_proc):
    from fpnstream.runtime.control_commands import source_of

    client = redis_proc.client()
    for live in (None, False, True):
        send_add(client, "ctl3", "v", "https://media.example/v.mp4", None, live=live)
    got = [source_of({k.decode(): v.decode() for k, v in fields.items()}).live for _, fields in client.xrange("ctl3:control")]
    assert got == [None, False, True]
