"""Child processes that cannot outlive their test.

Every process a test starts gets its own process group; at the end of the test the whole
group is killed, whatever the test did. `run` is `subprocess.run` with that rule: on a
timeout it kills the group, so a grandchild (an embedded redis-server, a Ray raylet) that
holds the pipes cannot keep the test waiting on EOF past its timeout.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
from typing import Any

_alive: list[subprocess.Popen] = []  # reaped after each test
_long_lived: list[subprocess.Popen] = []  # module/session fixtures: reaped when pytest exits


def spawn(args, long_lived: bool = False, **kw: Any) -> subprocess.Popen:
    proc = subprocess.Popen(args, start_new_session=True, **kw)
    (_long_lived if long_lived else _alive).append(proc)
    return proc


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run(args, timeout: float, **kw: Any) -> subprocess.CompletedProcess:
    proc = spawn(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate(timeout=30)
        raise subprocess.TimeoutExpired(args, timeout, out, err) from None
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def reap_all(which: list[subprocess.Popen] = _alive) -> list[str]:
    """Kill every group started since the last call; returns the ones still running."""
    leaked = []
    while which:
        proc = which.pop()
        if proc.poll() is None:
            leaked.append(" ".join(map(str, proc.args))[:120] if isinstance(proc.args, (list, tuple)) else str(proc.args))
        kill_group(proc)
        if proc.poll() is None:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for stream in (proc.stdout, proc.stderr, proc.stdin):
            if stream is not None:
                stream.close()
    return leaked


atexit.register(reap_all, _long_lived)
