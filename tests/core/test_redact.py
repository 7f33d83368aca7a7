from fpnstream.core.redact import redact_text, redact_url


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
