"""Threads that run forward passes ("lanes"), and the process-wide torch thread settings.

Why this module exists (the livelock of issue 11): torch's intra-op settings are process
state, but OpenMP's and the CPU's floating-point mode are per thread, and torch fixes a new
thread's settings lazily, on its first parallel op, by calling `at::set_num_threads` again.
That call also resets MKL's thread count and clears oneDNN's primitive cache for the whole
process. The old backend grew its executor on demand, so a lane thread was born, and ran
that lazy set-up, while another lane was inside a convolution; the bench also called
`torch.set_num_threads` for every detector it built. Both mutate state a running forward
pass depends on. The rules here:

- `configure_torch_threads` sets the process's numbers once, before any lane exists; asking
  for other numbers while lanes are alive is a programming error and raises.
- `LanePool` starts all of its threads up front and initialises them one at a time (torch's
  lazy per-thread set-up, denormals flushed in that thread's MXCSR) before it accepts work,
  so no thread is ever created or configured while a forward pass runs.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable

import torch

from fpnstream.core.scheduling import realtime_policy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThreadPlan:
    lanes: int  # forward passes at once
    intra_op: int  # torch threads inside one pass


_state_lock = threading.Lock()
_configured: ThreadPlan | None = None
_live_pools = 0


def plan_threads(device_type: str, torch_threads: int | None, lanes: int | None) -> ThreadPlan:
    """On a CPU, passes of our sizes scale poorly across intra-op threads but well across
    concurrent single-threaded passes, so by default every thread gets its own pass."""
    # Once configured, torch reports the per-lane count; the budget is what was planned.
    threads = torch_threads or (_configured.lanes * _configured.intra_op if _configured else torch.get_num_threads())
    if device_type != "cpu":
        return ThreadPlan(lanes or 1, threads)
    n = lanes or threads
    return ThreadPlan(n, max(1, threads // n))


def configure_torch_threads(plan: ThreadPlan) -> None:
    """Apply `plan` to this process. Idempotent; refuses to change while lanes are alive."""
    global _configured
    with _state_lock:
        if _configured == plan:
            return
        if _live_pools:
            raise RuntimeError(f"torch thread settings cannot change while {_live_pools} lane pool(s) run "
                               f"(have {_configured}, asked {plan})")
        # Only the thread count: flushing denormals is per thread (MXCSR) and is done in the
        # lanes, never in the caller's thread, whose other numerics it would silently change.
        torch.set_num_threads(plan.intra_op)
        _configured = plan


_warned_realtime = False


def _warn_if_realtime() -> None:
    global _warned_realtime
    policy = realtime_policy()
    if policy is not None and not _warned_realtime:
        _warned_realtime = True
        log.warning("detector lanes run under %s real-time scheduling (inherited from the parent process); "
                    "threads that spin while waiting can starve each other and livelock: start fpnstream "
                    "with normal scheduling", policy)


def _init_lane_thread() -> None:
    # get_num_threads runs torch's lazy per-thread set-up now, while no pass is in flight.
    torch.get_num_threads()
    torch.set_flush_denormal(True)  # denormals cost up to 10x in the backbone; MXCSR is per thread


class LanePool:
    """A fixed set of `n` threads taking jobs from one queue; results come back as futures."""

    _STOP = object()

    def __init__(self, n: int, name: str = "lane") -> None:
        global _live_pools
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        _warn_if_realtime()
        with _state_lock:
            _live_pools += 1
            # One at a time and under the lock: no lane initialises while another one (or a
            # configure call) could be touching torch's process state.
            for i in range(n):
                ready = threading.Event()
                t = threading.Thread(target=self._run, args=(ready,), name=f"{name}_{i}", daemon=True)
                t.start()
                ready.wait()
                self._threads.append(t)
        self._closed = False

    @property
    def size(self) -> int:
        return len(self._threads)

    def _run(self, ready: threading.Event) -> None:
        try:
            _init_lane_thread()
        finally:
            ready.set()
        while True:
            job = self._jobs.get()
            if job is self._STOP:
                return
            fut, fn, args = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 (handed to whoever waits on the future)
                fut.set_exception(e)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        if self._closed:
            raise RuntimeError("lane pool is closed")
        fut: Future = Future()
        self._jobs.put((fut, fn, args))
        return fut

    def close(self, wait: bool = True) -> None:
        global _live_pools
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._jobs.put(self._STOP)
        stuck = []
        if wait:
            for t in self._threads:
                t.join(30.0)  # a lane stuck in a forward pass must not stall shutdown forever
                if t.is_alive():
                    stuck.append(t.name)
        if stuck:
            log.warning("lane(s) %s still busy at close; leaving them", ", ".join(stuck))
            return  # still counted as live: torch settings stay frozen for this process
        with _state_lock:
            _live_pools -= 1
