"""Keeping the process on normal (time-shared) CPU scheduling.

The suite hang of issue 11 came from here: PyAV's bundled SVT-AV1 encoder, run as root,
switches the calling thread to SCHED_FIFO priority 99 and leaves it so. Every thread and
process started from that thread afterwards inherits the real-time policy. Under SCHED_FIFO
a thread runs until it blocks; threads that spin while they wait (OpenMP and oneDNN
barriers, a busy lane) are never preempted by the peer they wait for, so on a machine
with as many spinning threads as cores the job livelocks at 100 % CPU.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

_REALTIME = {getattr(os, name): name for name in ("SCHED_FIFO", "SCHED_RR") if hasattr(os, name)}


@contextlib.contextmanager
def keep_scheduling() -> Iterator[None]:
    """Restore the calling thread's scheduling policy after the block (for libraries that
    change it behind our back, like SVT-AV1)."""
    if not hasattr(os, "sched_getscheduler"):
        yield
        return
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        if (os.sched_getscheduler(0), os.sched_getparam(0)) != (policy, param):
            os.sched_setscheduler(0, policy, param)


def realtime_policy() -> str | None:
    """The calling thread's real-time policy name, or None under normal scheduling."""
    if not hasattr(os, "sched_getscheduler"):
        return None
    return _REALTIME.get(os.sched_getscheduler(0))
