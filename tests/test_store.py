import json
import multiprocessing
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.errors import UsageError
from harness.store import LockTimeout, Store, atomic_write_bytes, atomic_write_json, cell_key


def _spec(**over):
    spec = {"model": "toy", "method": {"name": "base", "steps": 4}, "suite": "eval-v1",
            "seeds": [0, 1]}
    return {**spec, **over}


def test_atomic_write_leaves_only_the_target(tmp_path):
    target = tmp_path / "a" / "x.json"
    atomic_write_json(target, {"v": 1})
    atomic_write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 2}
    assert os.listdir(target.parent) == ["x.json"]


def test_crash_before_rename_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "x.bin"
    atomic_write_bytes(target, b"old")

    def crash(src, dst):
        raise OSError("killed")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.bin"]


def test_cell_key_is_order_independent_and_value_sensitive():
    a = {"x": 1, "y": {"p": [1, 2], "q": "s"}}
    b = {"y": {"q": "s", "p": [1, 2]}, "x": 1}
    assert cell_key(a) == cell_key(b)
    assert len(cell_key(a)) == 16 and int(cell_key(a), 16) >= 0
    assert cell_key(a) != cell_key({**a, "x": 2})
    assert cell_key(a) != cell_key({**a, "y": {"p": [2, 1], "q": "s"}})
    assert cell_key(a) != cell_key({**a, "y": {"p": [1, 2], "q": "t"}})


def test_write_spec_is_idempotent_and_refuses_a_conflict(tmp_path):
    store = Store(tmp_path)
    cell = store.cell(cell_key(_spec()))
    assert cell.spec() is None
    cell.write_spec(_spec())
    cell.write_spec(dict(reversed(list(_spec().items()))))  # same spec, other key order
    assert cell.spec() == _spec()
    with pytest.raises(UsageError, match="different spec"):
        cell.write_spec(_spec(seeds=[0, 1, 2]))
    assert [c.key for c in store.cells()] == [cell.key]


def test_videos_records_status_and_scores_roundtrip(tmp_path):
    cell = Store(tmp_path).cell("abc")
    assert cell.status() is None and not cell.is_complete()
    cell.set_status("running")
    assert cell.status()["state"] == "running" and cell.status()["pid"] == os.getpid()
    rng = np.random.default_rng(0)
    videos = {i: rng.integers(0, 256, (3, 4, 5, 3), dtype=np.uint8) for i in (2, 0, 1)}
    for i, v in videos.items():
        cell.write_video(i, v, {"prompt": f"p{i}", "seed": i})
    assert cell.video_indices() == [0, 1, 2] and cell.has_record(1) and not cell.has_record(3)
    assert [r["prompt"] for r in cell.records()] == ["p0", "p1", "p2"]
    for i, v in videos.items():
        np.testing.assert_array_equal(cell.read_video(i), v)
    with pytest.raises(ValueError):
        cell.write_video(3, np.zeros((3, 4, 5, 3), dtype=np.float32), {})
    payload = {"metric": "dyn", "version": "1", "higher_is_better": {"ssim": True},
               "values": {"ssim": [0.1, 0.2, 0.3]}, "videos": 3}
    cell.write_scores("dyn", payload)
    assert cell.read_scores() == {"dyn": payload}
    cell.set_status("complete")
    assert cell.is_complete()


def test_video_without_record_is_not_complete(tmp_path):
    cell = Store(tmp_path).cell("abc")
    cell.write_video(0, np.zeros((1, 2, 2, 3), np.uint8), {"prompt": "p"})
    (cell.path / "records" / "00000.json").unlink()  # killed between video and record
    assert cell.video_indices() == [] and cell.records() == []
    with pytest.raises(UsageError, match="no complete video 0"):
        cell.read_video(0)


def test_unwritable_root_is_a_usage_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")  # a path under a file cannot be created, even by root
    with pytest.raises(UsageError, match=r"folder .*file/store is not writable.*paths\.store"):
        Store(blocker / "store")


def test_corrupt_json_and_npy_name_the_file(tmp_path):
    cell = Store(tmp_path).cell("abc")
    cell.write_video(0, np.zeros((1, 2, 2, 3), np.uint8), {"prompt": "p"})
    cell.set_status("running")
    status = cell.path / "status.json"
    status.write_text(status.read_text()[:10])
    with pytest.raises(UsageError, match="status.json is corrupt"):
        cell.status()
    video = cell.path / "videos" / "00000.npy"
    video.write_bytes(video.read_bytes()[:-5])
    with pytest.raises(UsageError, match="00000.npy is corrupt"):
        cell.read_video(0)


def test_stale_lock_of_a_dead_process_is_broken(tmp_path):
    cell = Store(tmp_path).cell("abc")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    cell.path.mkdir(parents=True)
    lock = cell.path / ".lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout)}))
    with cell.lock(timeout=5):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_live_lock_is_waited_for(tmp_path):
    cell = Store(tmp_path).cell("abc")
    with cell.lock():
        with pytest.raises(LockTimeout, match=r"\.lock is held"):
            with cell.lock(timeout=0.3):
                pass
    with cell.lock(timeout=0):
        pass


def _increment(cell_path: str, times: int) -> None:
    path = Path(cell_path)
    cell = Store(path.parent.parent).cell(path.name)
    counter = path / "counter"
    for _ in range(times):
        with cell.lock():
            # read-modify-write with a gap, so that an unlocked pair would lose updates
            value = int(counter.read_text())
            os.sched_yield()
            counter.write_text(str(value + 1))


def test_lock_serialises_processes(tmp_path):
    cell = Store(tmp_path).cell("abc")
    cell.path.mkdir(parents=True)
    (cell.path / "counter").write_text("0")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_increment, args=(str(cell.path), 50)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=50)
    assert [p.exitcode for p in procs] == [0, 0]
    assert (cell.path / "counter").read_text() == "100"
