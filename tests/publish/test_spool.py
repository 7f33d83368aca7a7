import os
from pathlib import Path

import numpy as np

from fpnstream.core.frames import BatchResult, Detections, FrameMeta, StageTimes
from fpnstream.publish.spool import PublishBuffer


def batch(stream: str, start: int, n: int) -> BatchResult:
    metas = tuple(FrameMeta(stream, i, None, 1.0, 4, 4) for i in range(start, start + n))
    dets = tuple(Detections(np.array([[0, 0, 1, 1]], np.float32), np.array([0.5], np.float32), np.array([1]), ("person",))
                 for _ in metas)
    return BatchResult(metas, dets, StageTimes(0, 0, 0))


def drain(buf: PublishBuffer) -> list[int]:
    out = []
    while (b := buf.peek()) is not None:
        out += [m.index for m in b.metas]
        buf.pop()
    return out


def test_memory_then_disk_then_back_to_memory_keeps_order(tmp_path):
    dropped = []
    buf = PublishBuffer(tmp_path / "spool", memory_frames=4, spool_bytes=10**7, on_drop=dropped.append)
    for k in range(5):
        buf.append(batch("s", 2 * k, 2))  # 2 in memory, 3 on disk
    assert len(list((tmp_path / "spool").glob("*.batch"))) == 3 and buf.frames == 10
    first = buf.peek()
    buf.pop()
    buf.append(batch("s", 10, 2))  # disk not empty yet: this must go behind it, to disk
    assert [m.index for m in first.metas] == [0, 1]
    assert drain(buf) == list(range(2, 12))
    assert not list((tmp_path / "spool").glob("*")) and not buf and dropped == []
    buf.append(batch("s", 12, 2))  # drained: memory again
    assert not list((tmp_path / "spool").glob("*"))


def test_full_spool_drops_and_reports(tmp_path):
    dropped = []
    buf = PublishBuffer(tmp_path, memory_frames=0, spool_bytes=1500, on_drop=dropped.append)
    for k in range(10):
        buf.append(batch("s", k, 1))
    assert 0 < len(dropped) < 10
    kept = drain(buf)
    assert kept == sorted(kept) and len(kept) + len(dropped) == 10


def test_no_spool_folder_means_memory_only(tmp_path):
    dropped = []
    buf = PublishBuffer(None, memory_frames=2, spool_bytes=0, on_drop=dropped.append)
    for k in range(3):
        buf.append(batch("s", k, 1))
    assert [m.index for b in dropped for m in b.metas] == [2] and drain(buf) == [0, 1]


def test_the_batch_being_written_always_fits_so_a_zero_limit_drops_nothing_while_redis_is_up(tmp_path):
    """Every batch passes through the buffer on its way to Redis: the limits are on what
    waits behind it. With buffer_frames 0 (or below a batch) and no spool, a healthy Redis
    must not see a single frame dropped."""
    dropped = []
    buf = PublishBuffer(None, memory_frames=0, spool_bytes=0, on_drop=dropped.append)
    for k in range(3):
        buf.append(batch("s", 4 * k, 4))  # a batch of 4 over a limit of 0
        assert drain(buf) == list(range(4 * k, 4 * k + 4))  # published at once
    assert dropped == []
    buf.append(batch("s", 12, 4))
    buf.append(batch("s", 16, 4))  # Redis is away: this one waits behind the first, no room
    assert [m.index for b in dropped for m in b.metas] == [16, 17, 18, 19]


def test_a_drained_spool_leaves_no_folder_and_only_folders_of_processes_gone_are_swept(tmp_path):
    import subprocess
    import sys

    from fpnstream.publish.spool_folder import own_folder, sweep

    own = own_folder(tmp_path)
    buf = PublishBuffer(own, memory_frames=0, spool_bytes=10**7)
    for k in range(3):
        buf.append(batch("s", 2 * k, 2))  # the first waits in memory, the others on disk
    assert len(list(own.glob("*.batch"))) == 2
    assert own.stat().st_mode & 0o777 == 0o700  # its files are unpickled later: no one else's to write
    assert sweep(tmp_path) == 0 and own.is_dir()  # ours, and we are alive
    assert drain(buf) == list(range(6))
    assert not own.exists()  # the outage is over

    # A process that spooled and died, whatever its pid says (containers sharing a host
    # name have their own pid namespaces): its lock went with it.
    code = ("import sys; from pathlib import Path; from fpnstream.publish.spool_folder import own_folder, hold; "
            "f = own_folder(sys.argv[1]); hold(f); (f / '000000000000.batch').write_bytes(b'x'); print(f)")
    dead = Path(subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                               check=True).stdout.strip())
    alive = subprocess.Popen([sys.executable, "-c", code + "; sys.stdout.flush(); sys.stdin.read()", str(tmp_path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        alive_folder = Path(alive.stdout.readline().strip())
        same_pid = tmp_path / f"{own.name.rsplit('-', 2)[0]}-{os.getpid()}-0123abcd"  # no lock: not judged
        same_pid.mkdir()
        # Another host's, its lock free here (NFS may not show it to us): never judged.
        elsewhere = tmp_path / "another-host-42-0123abcd"
        elsewhere.mkdir()
        (elsewhere / ".lock").touch()
        assert dead.is_dir() and alive_folder.is_dir()
        assert sweep(tmp_path) == 1
        assert not dead.exists() and alive_folder.is_dir() and same_pid.is_dir() and elsewhere.is_dir()
    finally:
        alive.stdin.close()
        alive.wait(10)
    assert sweep(tmp_path) == 1 and not alive_folder.exists()  # it ended: now it is swept too


def test_a_spool_that_cannot_be_written_drops_and_counts_and_leaves_nothing(tmp_path):
    """A full disk, or a spool path that cannot be a folder: the frames are dropped like on a
    full spool (counted), never an exception out of the publisher; no half-written file."""
    (tmp_path / "a-file").write_text("not a folder")
    dropped = []
    buf = PublishBuffer(tmp_path / "a-file" / "spool", memory_frames=2, spool_bytes=10**7, on_drop=dropped.append)
    for k in range(4):
        buf.append(batch("s", 2 * k, 2))  # the first fits in memory, the rest would spool
    assert [m.index for b in dropped for m in b.metas] == [2, 3, 4, 5, 6, 7]
    assert drain(buf) == [0, 1] and not buf
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
