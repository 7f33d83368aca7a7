"""Where the host feed's CPU goes, per thread: `fpnstream bench --feed`'s two runs (decoding
alone, the pipeline with the zero-cost stand-in detector), with the CPU time and context
switches of every thread of this process, and redis-server's CPU, per frame.

    .venv/bin/python benchmarks/feed_threads.py --size 640x360 --clips 8 --frames 300 --rounds 3

Threads are read from /proc/self/task every 10 ms (a thread's last reading before it ends
is kept); Python threads by their name, FFmpeg's codec threads as `ffmpeg`. Linux only.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from fpnstream.devtools.bench import make_inputs
from fpnstream.devtools.feed import decode_alone, pipeline_fed
from fpnstream.publish.connection import EmbeddedRedis

TICK = os.sysconf("SC_CLK_TCK")


def _task(path: str) -> tuple[float, int]:
    """CPU seconds and context switches (voluntary + involuntary) of one thread or process."""
    with open(f"{path}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    with open(f"{path}/status") as f:
        switches = sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
    return (int(fields[11]) + int(fields[12])) / TICK, switches


def _threads() -> dict[int, tuple[float, int]]:
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            out[int(tid)] = _task(f"/proc/self/task/{tid}")
        except OSError:  # ended between listing and reading
            pass
    return out


def _role(name: str | None) -> str:
    if name is None:
        return "ffmpeg"
    if name.startswith("decode-") or name.startswith("Thread-"):  # the pipeline's / decode_alone's decoders
        return "decoder"
    return name.rstrip("_0123456789") or name


def measure(run, server_pid: int, frames: int) -> tuple[float, dict[str, tuple[float, float]]]:
    """frames/s of `run()`, and per role: ms of CPU and context switches per frame."""
    last: dict[int, tuple[float, int]] = {}
    names: dict[int, str] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for t in threading.enumerate():
                if t.native_id is not None:
                    names[t.native_id] = t.name
            last.update(_threads())
            time.sleep(0.01)

    before, server0 = _threads(), _task(f"/proc/{server_pid}")
    sampler = threading.Thread(target=sample, name="sampler", daemon=True)
    sampler.start()
    fps = run()
    done.set()
    sampler.join()
    last.update(_threads())
    server1 = _task(f"/proc/{server_pid}")
    roles: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for tid, (cpu, switches) in last.items():
        role = _role(names.get(tid))
        if role == "sampler":
            continue
        cpu0, switches0 = before.get(tid, (0.0, 0))
        roles[role][0] += cpu - cpu0
        roles[role][1] += switches - switches0
    roles["redis-server"] = [server1[0] - server0[0], server1[1] - server0[1]]
    return fps, {k: (1000 * v[0] / frames, v[1] / frames) for k, v in roles.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.split("x"))
    n = a.clips * a.frames
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_inputs(Path(tmp), a.clips, a.frames, w, h)
        decode_alone(paths)  # page cache, PyAV's first use
        with EmbeddedRedis(Path(tmp) / "redis") as server:
            pipeline_fed(paths, a.batch_size, 0.002, server.url)  # the pipeline's imports and first use
            pid = server.pid
            for r in range(a.rounds):
                alone, per_alone = measure(lambda: decode_alone(paths), pid, n)
                fed, per_fed = measure(lambda: pipeline_fed(paths, a.batch_size, 0.002, server.url)[0], pid, n)
                print(f"round {r + 1}: decode alone {alone:.0f} frames/s, pipeline {fed:.0f} frames/s, "
                      f"ratio {fed / alone:.3f}")
                for label, per in (("decode alone", per_alone), ("pipeline", per_fed)):
                    total = sum(ms for ms, _ in per.values())
                    parts = ", ".join(f"{k} {ms:.3f} ms / {sw:.2f} sw" for k, (ms, sw) in
                                      sorted(per.items(), key=lambda kv: -kv[1][0]) if ms or sw)
                    print(f"  {label}: {total:.3f} ms CPU per frame: {parts}", flush=True)


if __name__ == "__main__":
    main()
