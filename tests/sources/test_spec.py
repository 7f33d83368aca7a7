import re

import pytest

from fpnstream.config.settings import SourceConfig
from fpnstream.core.errors import SourceError
from fpnstream.core.ids import STREAM_ID
from fpnstream.sources.spec import default_stream_id, parse_source_arg, resolve_sources


def test_id_prefix_parsed():
    c = parse_source_arg("cam1=rtsp://u:p@host/x")
    assert (c.id, c.uri) == ("cam1", "rtsp://u:p@host/x")


def test_equals_inside_uri_is_not_an_id():
    c = parse_source_arg("rtsp://host/stream?channel=1&a=b")
    assert c.id is None and c.uri == "rtsp://host/stream?channel=1&a=b"
    c = parse_source_arg("/videos/a=b.mp4")
    assert c.id is None and c.uri == "/videos/a=b.mp4"


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("/data/front door.mp4", "front_door"),
        ("file:///data/lobby.mkv", "lobby"),
        ("rtsp://admin:hunter2@10.0.0.5:554/Streaming/101", "10.0.0.5-Streaming_101"),
        ("rtsp://cam.local/", "cam.local"),
        ("rtsp://admin:hun/ter2@10.0.0.5/live", "10.0.0.5-live"),  # a raw "/" in the password
        ("rtsp://admin:hun#ter2@10.0.0.5/live", "10.0.0.5-live"),
    ],
)
def test_default_ids_are_readable_and_secret_free(uri, expected):
    sid = default_stream_id(uri)
    assert sid == expected
    assert "hun" not in sid and "ter2" not in sid and "admin" not in sid


def test_rtmp_default_ids_keep_the_stream_key_out_and_still_tell_streams_apart():
    a, b = "rtmp://u:pw@media.local/live/K3y-One", "rtmp://media.local/live/K3y-Two"
    ids = [default_stream_id(u) for u in (a, b)]
    assert all(i.startswith("media.local-live_k") and "K3y" not in i and "pw" not in i for i in ids)
    assert ids[0] != ids[1] and ids[0] == default_stream_id(a)  # distinct, and the same on every start
    (spec,) = resolve_sources([SourceConfig(uri=a)])
    assert spec.stream_id == ids[0] and spec.display == "rtmp://***@media.local/live/***" and spec.live
    assert default_stream_id("rtmp://media.local/live") == "media.local-live"  # no key, nothing hidden
    # a long host and application are cut to fit 128 characters, the digest is not
    long = [default_stream_id("rtmp://" + "a" * 60 + "/" + "b" * 70 + f"/{k}") for k in ("K1", "K2")]
    assert long[0] != long[1] and all(len(i) == 128 and re.fullmatch(STREAM_ID, i) for i in long)
    # a refused member of the family says so without the key
    with pytest.raises(SourceError, match=r"unsupported source scheme 'rtmpe' in rtmpe://h/live/\*\*\*;"):
        resolve_sources([SourceConfig(uri="rtmpe://h/live/K3y-Three")])


def test_duplicate_defaults_get_suffix_and_live_detected():
    specs = resolve_sources([SourceConfig(uri="a/x.mp4"), SourceConfig(uri="b/x.mp4"), SourceConfig(uri="rtsp://h/x")])
    assert [s.stream_id for s in specs] == ["x", "x-2", "h-x"]
    assert [s.live for s in specs] == [False, False, True]


def test_duplicate_explicit_ids_rejected():
    with pytest.raises(SourceError, match="duplicate stream id"):
        resolve_sources([SourceConfig(uri="a.mp4", id="a"), SourceConfig(uri="b.mp4", id="a")])


def test_unknown_scheme_rejected_without_credentials():
    with pytest.raises(SourceError) as e:
        resolve_sources([SourceConfig(uri="ftp://bob:pw123@host/v.mp4")])
    assert "unsupported source scheme 'ftp'" in str(e.value)
    assert "pw123" not in str(e.value)


def test_display_redacts():
    (spec,) = resolve_sources([SourceConfig(uri="rtsp://bob:pw123@host:8554/live")])
    assert spec.display == "rtsp://***@host:8554/live"


def test_explicit_id_wins_over_generated_one_in_any_order():
    specs = resolve_sources([SourceConfig(uri="a.mp4"), SourceConfig(uri="b.mp4", id="a")])
    assert [s.stream_id for s in specs] == ["a-2", "a"]


def test_live_is_told_by_the_uri_unless_the_source_says():
    by_uri = resolve_sources([SourceConfig(uri="https://h/a.mp4", id="a"), SourceConfig(uri="/v/b.mp4", id="b")])
    assert [s.live for s in by_uri] == [True, False]
    told = resolve_sources([SourceConfig(uri="https://h/a.mp4", id="a", live=False),
                            SourceConfig(uri="/tmp/fifo", id="b", live=True)])
    assert [(s.live, s.local) for s in told] == [(False, False), (True, True)]


def test_live_false_is_for_files_and_http_only():
    with pytest.raises(SourceError, match=r"`live: false` is for files and http\(s\) URLs, not rtsp://"):
        resolve_sources([SourceConfig(uri="rtsp://u:secret@cam/x", live=False)])
    assert resolve_sources([SourceConfig(uri="/v/a.mp4", live=False)])[0].live is False
