"""Stress: the pattern that once hung the suite, repeated in one process.

`fpnstream bench` builds several detectors in one process and runs paced in-process
pipelines with two CPU lanes; once, inside the full suite, it spun at 100 % CPU forever
(issue 11). The cause was the suite's process state: its clip fixture encodes an AV1 clip,
and SVT-AV1 run as root leaves the calling thread on SCHED_FIFO 99, which every later
thread and child process inherits (see fpnstream/core/scheduling.py). This script does what the
suite did: it first encodes an AV1 clip in this process, then, many times over, builds a
detector from its config, starts a lane pool, runs a paced two-stream pipeline into Redis,
checks every frame was published, and closes it. A watchdog dumps every thread's stack and
exits 3 if one repetition takes too long.

    .venv/bin/python benchmarks/stress_lanes.py --reps 300 [--hogs 1] [--out benchmarks/out/stress.json]
    .venv/bin/python benchmarks/stress_lanes.py --without-fix   # encode AV1 as before the fix

`--hogs N` runs N busy processes beside it (what a suite's leftovers would do to it).
`--without-fix` encodes the AV1 clip with PyAV directly, so the process is left real-time
as the suite was (needs root to reproduce; expect exit 3 and the stacks).
Exit 0 and a JSON summary when every repetition finished.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path


def _hog() -> None:
    while True:
        pass


def _encode_av1_unguarded(path: Path) -> None:
    """As write_clip did before the fix: PyAV straight, nothing restored afterwards."""
    from fractions import Fraction

    import av

    from fpnstream.devtools.synthetic import synthetic_frame

    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libsvtav1", rate=30, options={"svtav1-params": "log-level=1"})
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(12):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(i, 160, 120), format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = i, 1 / Fraction(30)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--frames", type=int, default=8, help="frames per clip (two clips per repetition)")
    ap.add_argument("--rep-timeout", type=float, default=120.0, help="seconds before a repetition counts as hung")
    ap.add_argument("--hogs", type=int, default=0, help="busy processes running beside the stress")
    ap.add_argument("--redis-url", help="default: an embedded redis-server")
    ap.add_argument("--out", help="write the JSON summary here too")
    ap.add_argument("--without-fix", action="store_true", help="encode the AV1 clip without keeping the scheduling policy")
    a = ap.parse_args()

    from fpnstream.job import run_job
    from fpnstream.config.settings import build_config
    from fpnstream.publish.connection import EmbeddedRedis, connect
    from fpnstream.devtools.synthetic import synthetic_frame, write_clip
    from fpnstream.devtools.testing import make_firing_model, save_checkpoint

    model = "fasterrcnn_mobilenet_v3_large_320_fpn"
    hogs = [multiprocessing.Process(target=_hog, daemon=True) for _ in range(a.hogs)]
    for h in hogs:
        h.start()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        av1 = {"codec": "libsvtav1", "options": {"svtav1-params": "log-level=1"}}
        if a.without_fix:
            _encode_av1_unguarded(tmp / "fixture.mkv")
        else:
            write_clip(tmp / "fixture.mkv", frames=12, width=160, height=120, **av1)  # what conftest's clips do
        policy = os.sched_getscheduler(0)
        print(f"scheduling policy after the AV1 clip: {policy} ({'real-time' if policy else 'normal'})",
              file=sys.stderr, flush=True)
        clips = [write_clip(tmp / f"c{i}.mp4", frames=a.frames, width=160, height=120, seed=i) for i in range(2)]
        ckpt = save_checkpoint(make_firing_model(model, [synthetic_frame(i, 160, 120) for i in (0, 5)], seed=3),
                               tmp / "m.pth")
        embedded = None if a.redis_url else EmbeddedRedis(tmp / "redis").start()
        url = a.redis_url or embedded.url
        client = connect(url)
        times: list[float] = []
        current = {"rep": -1, "since": time.monotonic()}

        def watchdog() -> None:
            while True:
                time.sleep(1.0)
                if time.monotonic() - current["since"] > a.rep_timeout:
                    sys.stderr.write(f"HUNG in repetition {current['rep']} after {a.rep_timeout:.0f} s; all threads:\n")
                    faulthandler.dump_traceback(all_threads=True)
                    os._exit(3)

        threading.Thread(target=watchdog, daemon=True).start()
        started = time.monotonic()
        try:
            for rep in range(a.reps):
                current.update(rep=rep, since=time.monotonic())
                prefix = f"stress{rep}"
                cfg = build_config({
                    # realtime: paced like the bench's load run, so lanes start while frames trickle in
                    "sources": [{"uri": str(c), "id": c.stem, "realtime": True} for c in clips],
                    "model": {"name": model, "weights": str(ckpt), "device": "cpu", "min_size": 96, "max_size": 160},
                    "batch": {"max_size": 1, "freshness_ms": None},
                    "ray": {"in_process": True},
                    "redis": {"url": url, "prefix": prefix, "spool_dir": None},
                    "metrics": {"port": 0},
                    "preview": {"fps": 0},
                    "log_level": "WARNING",
                })
                run_job(cfg, threading.Event())
                for c in clips:
                    n = client.xlen(f"{prefix}:detections:{{{c.stem}}}")
                    if n != a.frames:
                        raise SystemExit(f"repetition {rep}: stream {c.stem} has {n} entries, expected {a.frames}")
                client.delete(*client.keys(f"{prefix}:*"))
                times.append(time.monotonic() - current["since"])
                if rep % 25 == 0:
                    print(f"rep {rep}: {times[-1]:.2f} s", file=sys.stderr, flush=True)
        finally:
            client.close()
            if embedded:
                embedded.stop()
    summary = {"reps": len(times), "hung": 0, "scheduling_policy": policy, "without_fix": a.without_fix, "seconds_total": round(time.monotonic() - started, 1),
               "rep_seconds": {"median": round(statistics.median(times), 3), "max": round(max(times), 3)},
               "hogs": a.hogs, "frames_per_rep": 2 * a.frames, "lanes": os.cpu_count()}
    print(json.dumps(summary))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
