"""`fpnstream bench --feed`: the host side measured with a stand-in detector that costs no
host time, against PyAV decoding alone, on real encoded clips and a real Redis."""

import json

from tests.conftest import run_cli


def test_feed_bench_publishes_every_frame_and_reports_the_ratio(tmp_path):
    out = tmp_path / "feed"
    proc = run_cli("bench", "--feed", "--clips", "2", "--frames", "20", "--size", "160x120", "--batch-size", "4",
                   "--rounds", "2", "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "feed.json").read_text())
    assert doc["published"] == 40, doc  # every frame of both clips went through and into Redis
    assert doc["decode_alone_fps"] > 0 and doc["pipeline_fps"] > 0
    assert abs(doc["ratio"] - doc["pipeline_fps"] / doc["decode_alone_fps"]) < 0.01
    assert len(doc["rounds"]) == 2 and all(min(r.values()) > 0 for r in doc["rounds"])
    assert abs(doc["ratio_to_plain_pyav"] - doc["pipeline_fps"] / doc["plain_pyav_fps"]) < 0.01
    assert {"decode", "publish"} <= set(doc["pipeline_stage_ms_per_frame"])
    assert "ratio" in proc.stdout
