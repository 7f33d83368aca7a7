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


def test_a_drained_spool_leaves_no_folder_and_dead_processes_folders_are_swept(tmp_path):
    import socket
    import subprocess
    import sys

    from fpnstream.publish.spool import spool_folder, sweep_dead_spools

    own = spool_folder(tmp_path)
    buf = PublishBuffer(own, memory_frames=0, spool_bytes=10**7)
    buf.append(batch("s", 0, 2))
    assert own.is_dir()
    drain(buf)
    assert not own.exists()  # the outage is over

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    host = own.name.rsplit("-", 2)[0]
    dead = tmp_path / f"{host}-{dead_pid}-0123abcd"
    dead.mkdir()
    (dead / "000000000000.batch").write_bytes(b"never published")
    alive = spool_folder(tmp_path)  # this process: alive
    alive.mkdir()
    elsewhere = tmp_path / f"other-host-{dead_pid}-0123abcd"  # another machine's, on a shared folder
    elsewhere.mkdir()
    assert host == socket.gethostname() or "_" in host
    assert sweep_dead_spools(tmp_path) == 1
    assert not dead.exists() and alive.is_dir() and elsewhere.is_dir()
