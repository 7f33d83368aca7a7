"""Whose is a spool folder, and is its process still there?

Each process spools into a folder of its own under the spool root, `<host>-<pid>-<random>`,
and holds an exclusive flock on the `.lock` file in it for as long as the folder exists. A
process that died (killed during an outage) holds nothing, so a new process can remove its
folder: what it held was never published, and the streams' resume points are before it.
A lock, not only the pid: containers that share a host name have their own pid namespaces,
and a pid is reused; a flock ends with its process whatever namespace it ran in. Only this
host's folders are judged, and never this process's own (see `sweep`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import socket
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

_LOCK = ".lock"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())


def own_folder(root: str | Path) -> Path:
    return Path(root) / f"{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def hold(folder: Path) -> int:
    """Make `folder` and lock it; returns the lock's descriptor (keep it open)."""
    # This process's alone (0700): what is in it is unpickled when Redis is back, so no other
    # user may put files there.
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Locked under another name, then renamed: a sweeper never finds a `.lock` unlocked.
    tmp = folder / f"{_LOCK}.{uuid.uuid4().hex[:8]}"
    fd = os.open(tmp, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.replace(tmp, folder / _LOCK)
    return fd


def let_go(folder: Path, fd: int) -> None:
    """The folder has drained: remove it, then the lock."""
    try:
        (folder / _LOCK).unlink(missing_ok=True)
        folder.rmdir()
    except OSError:  # something else in it (a .tmp being written): leave it
        pass
    os.close(fd)


def sweep(root: str | Path) -> int:
    """Remove the spool folders under `root` whose process is gone; returns how many."""
    # Only this host's, and never this process's own (several workers of a local pool share
    # a process): on NFS and CIFS a flock is a POSIX lock, which its own process can take
    # again, and another host's locks may not be seen at all.
    name = re.compile(rf"^{re.escape(_host())}-(\d+)-[0-9a-f]{{8}}$")
    removed = 0
    try:
        folders = [p for p in Path(root).iterdir()
                   if (m := name.match(p.name)) and int(m[1]) != os.getpid() and p.is_dir()]
    except FileNotFoundError:
        return 0
    for folder in folders:
        lock = folder / _LOCK
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:  # no lock (being made, or an older version's folder): not ours to judge
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its process is alive
            os.close(fd)
            continue
        try:
            # Still the lock at that path (not one its owner let go of and made again)?
            if os.stat(lock).st_ino != os.fstat(fd).st_ino:
                continue
            batches = sum(1 for _ in folder.glob("*.batch"))
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
            log.info("removed the spool folder of a process that is gone (%s, %d batch(es) never published; "
                     "their streams publish those frames again when they resume)", folder, batches)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed
