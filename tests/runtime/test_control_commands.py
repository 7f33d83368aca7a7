"""Control commands as the job applies them: a refused one says why, without its secrets."""

from __future__ import annotations

import logging

from fpnstream.runtime.control_commands import ControlCommands


def test_a_refused_add_keeps_the_uri_and_its_secrets_out_of_the_reason(caplog):
    """pydantic's own message quotes a shortened input: the cut removed the `/app/` and the
    `user:password@` shape that redaction looks for, and the rest of the secret showed."""
    status: dict[str, dict] = {}
    commands = ControlCommands(add=lambda configs: [c.id for c in configs], remove=lambda sid: False,
                               running=lambda sid: False, write_status=lambda sid, fields: status.update({sid: fields}))
    with caplog.at_level(logging.WARNING):
        commands.apply({"op": "add", "id": "yt", "uri": "rtmp://a.rtmp.youtube.com/live2/abcd-efgh-ijkl-mnop-qrst\n"})
        commands.apply({"op": "add", "id": "cam", "uri": "rtsp://admin:" + "Sup3rSecretPassw0rd" * 3 + "@10.0.0.5/x y"})
    assert status["yt"]["state"] == "failed" and "a URL may not hold spaces" in status["yt"]["error"]
    assert status["cam"]["state"] == "failed"
    told = caplog.text + repr(status)
    assert "mnop" not in told and "qrst" not in told and "Passw0rd" not in told and "input_value" not in told


def test_an_add_says_whether_its_source_is_live_or_leaves_it_to_the_uri():
    from fpnstream.runtime.control_commands import source_of

    uri = "https://media.example/v.mp4"
    assert [source_of({"op": "add", "uri": uri, **extra}).live for extra in ({}, {"live": "0"}, {"live": "1"})] == [
        None, False, True]
    for bad in ({"live": "yes"}, {"analytics": '{"live": false}'}):
        try:
            source_of({"op": "add", "uri": uri, **bad})
        except ValueError as e:
            assert "live" in str(e)
        else:
            raise AssertionError(f"{bad} was accepted")
