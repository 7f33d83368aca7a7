from fpnstream.core.redact import redact_text, redact_url, rtmp_key


def test_redact_url_variants():
    assert redact_url("redis://:pw@host:6379/0") == "redis://***@host:6379/0"
    assert redact_url("rediss://user:pw@host/1") == "rediss://***@host/1"
    assert redact_url("rtsp://host/x") == "rtsp://host/x"
    assert redact_url("rtsp://u:p@[::1]:554/a") == "rtsp://***@[::1]:554/a"


def test_redact_text_inside_messages():
    msg = "Error connecting to rtsp://admin:secret@10.1.1.1/live: refused; also redis://:pw@r:1"
    out = redact_text(msg)
    assert "secret" not in out and ":pw@" not in out
    assert "rtsp://***@10.1.1.1/live" in out


def test_passwords_with_raw_separators_are_redacted():
    # Typed as cameras' web pages accept them: not percent-encoded.
    for url, kept in [("rtsp://admin:pa#ss@cam/x", "rtsp://***@cam/x"), ("redis://:se#cret@h:6379/0", "redis://***@h:6379/0"),
                      ("rtsp://admin:pa?ss@cam/x", "rtsp://***@cam/x"), ("rtsp://admin:p@ss@cam:554/x", "rtsp://***@cam:554/x"),
                      ("redis://:p@ss?@h/0", "redis://***@h/0"), ("rtsp://camuser:pa55/w@127.0.0.1:1/s", "rtsp://***@127.0.0.1:1/s")]:
        assert redact_url(url) == kept, url
        assert redact_text(f"cannot open {url}: refused") == f"cannot open {kept}: refused", url


def test_text_without_user_info_is_unchanged():
    assert redact_text("mail ops@example.org") == "mail ops@example.org"
    assert redact_text("rtsp://cam:554/live user@example.org") == "rtsp://cam:554/live user@example.org"
    assert redact_url("rtsp://cam/live?channel=1") == "rtsp://cam/live?channel=1"


def test_query_credentials_are_redacted():
    # The value runs to the next "&" or space (a password may hold ":"), so its colon goes too.
    assert redact_text("cannot reach Redis at unix:///tmp/r.sock?password=s3:cr3t: refused") == \
        "cannot reach Redis at unix:///tmp/r.sock?password=*** refused"
    assert redact_url("rtsp://cam/live?user=a&Token=abc&x=1") == "rtsp://cam/live?user=a&Token=***&x=1"


def test_srt_passphrases_and_query_keys_are_redacted():
    assert redact_url("srt://10.0.0.5:9000?mode=caller&passphrase=hunter2hunter2") == \
        "srt://10.0.0.5:9000?mode=caller&passphrase=***"
    assert redact_text("open https://h/x.m3u8?key=k1&sig=abc&api_key=z failed") == \
        "open https://h/x.m3u8?key=***&sig=***&api_key=*** failed"



def test_rtmp_stream_keys_are_redacted():
    # rtmp://host/app/KEY: the key is the last path segment after the application
    assert redact_url("rtmp://live.example.org/live2/abcd-1234-efgh") == "rtmp://live.example.org/live2/***"
    assert redact_url("RTMPS://u:p/w@h:443/app/inst/KEY?x=1") == "RTMPS://***@h:443/app/inst/***?x=1"
    assert redact_text("cannot open rtmp://h:1935/live/k3y refused") == "cannot open rtmp://h:1935/live/*** refused"
    assert rtmp_key("rtmp://h/live/k3y") == "k3y" and rtmp_key("rtmps://u:p/w@h/live/k3y#x") == "k3y"
    # the whole RTMP family FFmpeg speaks, and each URL of a list
    for scheme in ("rtmpe", "rtmpt", "rtmpte", "rtmpts"):
        assert redact_url(f"{scheme}://h/live/k3y") == f"{scheme}://h/live/***", scheme
    assert redact_text('["rtmp://h/live/K1","rtmp://h/live/K2"]') == '["rtmp://h/live/***","rtmp://h/live/***"]'
    # an application alone carries no key; other schemes' paths are not keys
    for url in ("rtmp://h/live", "rtmp://h/live/", "rtsp://h/live/cam", "https://h/live/index.m3u8"):
        assert redact_url(url) == url and rtmp_key(url) is None, url
