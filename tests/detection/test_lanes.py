"""fpnstream.detection.lanes: lanes are set up before work, torch's thread settings are frozen while
lanes run, and denormals are flushed in the lanes only."""

import os
import sys
import threading

import torch

from fpnstream.detection.lanes import LanePool, configure_torch_threads, plan_threads
from tests import procs

TINY = 1e-310  # a subnormal double


def test_lanes_flush_denormals_but_the_callers_thread_keeps_ieee_numerics():
    configure_torch_threads(plan_threads("cpu", None, None))
    pool = LanePool(2, name="t")
    try:
        in_lane = pool.submit(lambda: (torch.tensor([TINY], dtype=torch.float64) * 1.0).item()).result(10)
        names = {pool.submit(lambda: threading.current_thread().name).result(10) for _ in range(8)}
    finally:
        pool.close()
    assert in_lane == 0.0, "a lane computes with denormals flushed"
    assert (torch.tensor([TINY], dtype=torch.float64) * 1.0).item() == TINY, "the caller's thread is untouched"
    assert sys.float_info.min > TINY > 0.0
    assert names <= {"t_0", "t_1"}, "no thread is created after the pool started"


FROZEN = """
import torch
from fpnstream.detection.lanes import LanePool, configure_torch_threads, plan_threads
from tests import procs
plan = plan_threads("cpu", 4, 2)
configure_torch_threads(plan)
pool = LanePool(plan.lanes)
configure_torch_threads(plan)  # the same numbers: fine
try:
    configure_torch_threads(plan_threads("cpu", 8, 2))
    raise SystemExit("changed while lanes ran")
except RuntimeError as e:
    assert "cannot change while" in str(e), e
pool.close()
configure_torch_threads(plan_threads("cpu", 1, 1))  # no lanes alive any more: allowed
assert torch.get_num_threads() == 1
print("ok")
"""


def test_thread_settings_are_frozen_while_lanes_run():
    """In a fresh interpreter: process-wide state must not depend on earlier tests."""
    proc = procs.run([sys.executable, "-c", FROZEN], text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_an_av1_clip_leaves_the_callers_scheduling_alone(tmp_path):
    """SVT-AV1, run as root, switches the encoding thread to SCHED_FIFO 99; write_clip
    restores it. Checked in a fresh interpreter so the suite itself is never at risk."""
    code = ("import os\n"
            "from fpnstream.devtools.synthetic import write_clip\n"
            f"write_clip({str(tmp_path / 'e.mkv')!r}, frames=6, width=96, height=64, codec='libsvtav1',"
            " options={'svtav1-params': 'log-level=1'})\n"
            "print(os.sched_getscheduler(0), os.sched_getparam(0).sched_priority)\n")
    proc = procs.run([sys.executable, "-c", code], text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [str(os.SCHED_OTHER), "0"]
