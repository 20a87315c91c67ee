"""The store under faults: full and read-only disks, clock skew between hosts, debris of killed
writers, and two processes scoring one cell (issue 25; tests/test_faults.py injects a fault at every
write point)."""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import harness.experiment.resources
import harness.store.lease
from faults import CELL, Injector, debris, run_command as _run
from harness.store.cells import Store, cell_bytes
from harness.store.files import host_tag, temp_path
from harness.store.lease import LockTimeout, remove_stale_temp_files


@pytest.fixture
def tmpfs(tmp_path):
    """A folder on a tmpfs of the size asked for (mount needs root); unmounted after the test."""
    mounts = []

    def mount(size_kib: int, *options: str) -> Path:
        folder = tmp_path / f"tmpfs{len(mounts)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size_kib}k", *options]), "tmpfs",
                               str(folder)], capture_output=True, text=True)
        if done.returncode != 0:
            why = f"mounting a tmpfs was refused ({done.stderr.strip() or done.returncode}): needs root"
            if os.environ.get("CI"):  # CI runs as root: the real full disk must be tested there
                pytest.fail(f"in CI, which must run it: {why}", pytrace=False)
            pytest.skip(why)  # the simulated full disks (tests/faults.py) run everywhere
        mounts.append(folder)
        return folder

    yield mount
    for folder in mounts:
        subprocess.run(["umount", str(folder)], check=False)


# -- a full disk -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_disk_that_fills_mid_run_ends_in_one_line_and_leaves_the_cell_resumable(tmp_path):
    """ENOSPC at the third video, and at every write after it (the status "failed" too): one line, exit 2,
    a cell that reads as interrupted, not running; the same command then finishes it."""
    points = Injector(tmp_path / "ref")
    assert _run("run", tmp_path / "ref", points)[0] == 0
    third_video = next(p.index for p in points.points if p.kind == "write" and p.path.endswith("videos/00002.npy"))
    code, lines = _run("run", tmp_path / "w", Injector(tmp_path / "w", third_video, "enospc"))
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("refinery: error: cannot write ") and "videos/00002.npy: its file system is full" in lines[0]
    assert "free space there" in lines[0]
    (cell,) = Store(tmp_path / "w" / "store").cells()
    assert cell.state() == "interrupted" and cell.video_indices() == [0, 1]  # the first batch is kept
    assert debris(tmp_path / "w") == []
    assert _run("run", tmp_path / "w")[0] == 0 and cell.state() == "complete"


@pytest.mark.slow
def test_a_real_full_tmpfs_mid_run(tmpfs, tmp_path, monkeypatch):
    """A tmpfs that passes the free-space check and then fills (a ballast file written when the third
    video is due): one line, exit 2; with the ballast gone the same command finishes the cell."""
    from harness.store.cells import Cell

    folder = tmpfs(400)
    write_video, filled = Cell.write_video, []

    def fill_then_write(self, i, video, record=None):
        if i == 2 and not filled:
            filled.append(True)
            try:
                with open(folder / "ballast", "wb") as f:
                    while True:
                        f.write(b"\0" * 4096)
                        f.flush()
            except OSError:
                pass
        write_video(self, i, video, record)

    monkeypatch.setattr(Cell, "write_video", fill_then_write)
    code, lines = _run("run", folder)
    assert code == 2 and len(lines) == 1 and "its file system is full (No space left on device)" in lines[0], lines
    (cell,) = Store(folder / "store").cells()
    assert cell.state() == "interrupted"
    (folder / "ballast").unlink()
    assert _run("run", folder) == (0, []) and cell.state() == "complete" and debris(folder) == []


def test_the_free_space_check_counts_every_file_a_cell_writes(tmpfs):
    """A tmpfs with room for the videos alone is refused before anything is written."""
    folder = tmpfs(96)  # 4 videos of 18.5 KB fit; with records, manifest, scores, spec and status they do not
    code, lines = _run("run", folder)
    assert code == 2 and len(lines) == 1 and "with their records, manifest and 3 score files" in lines[0], lines
    assert not (folder / "store" / "cells").exists() or not any((folder / "store" / "cells").iterdir())


@pytest.mark.slow
def test_cell_bytes_is_a_lower_bound_of_a_real_cell(tmp_path):
    """The estimate never exceeds what a finished cell takes (st_blocks) with the temp copy of its manifest
    that a rewrite needs, and counts more than its videos."""
    assert _run("run", tmp_path)[0] == 0
    store = tmp_path / "store"
    (cell,) = Store(store).cells()
    used = sum(p.lstat().st_blocks * 512 for p in store.rglob("*") if p.is_file())
    video = cell.video_path(0).stat().st_size - 128
    block = os.statvfs(store).f_frsize
    manifest = (cell.path / "manifest.json").lstat().st_blocks * 512
    assert 4 * video + 8 * block <= cell_bytes(4, video, 3, block) <= used + manifest


def test_free_space_is_checked_against_the_whole_cell(tmp_path, monkeypatch):
    """Without a tmpfs: a store with room for the videos and not for the rest is refused in one line."""
    monkeypatch.setattr(harness.experiment.resources, "free_disk", lambda folder: 90 * 1024)
    code, lines = _run("run", tmp_path)
    assert code == 2 and len(lines) == 1 and "which has 90 KiB free" in lines[0], lines


def test_a_virtual_or_read_only_store_is_blamed_on_what_it_is(tmpfs, tmp_path):
    code, lines = _run("run", tmp_path, store="/proc/refinery-store")
    assert code == 2 and len(lines) == 1 and "folder /proc is not writable (a virtual file system" in lines[0], lines
    assert "free" not in lines[0]
    read_only = tmpfs(1024, "ro")
    code, lines = _run("run", tmp_path, store=str(read_only / "store"))
    assert code == 2 and len(lines) == 1 and f"folder {read_only} is read-only" in lines[0], lines


# -- clock skew --------------------------------------------------------------------------------------


@pytest.fixture
def short_lease(monkeypatch):
    monkeypatch.setattr(harness.store.lease, "LEASE_S", 1.0)
    monkeypatch.setattr(harness.store.lease, "HEARTBEAT_S", 0.1)
    monkeypatch.setattr(harness.store.lease, "say", lambda line: None)


def _foreign_lock(path: Path, mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": "elsewhere", "pid": 4242, "token": "t", "since": mtime}))
    os.utime(path, (mtime, mtime))


def test_a_future_dated_lease_is_taken_over_after_the_stale_time_of_watched_silence(tmp_path, short_lease):
    """A lock from a host whose clock is an hour ahead: taken over once unchanged for LEASE_S, not an hour."""
    cell = Store(tmp_path).cell("abc")
    _foreign_lock(cell.path / ".lock", time.time() + 3600)
    start = time.monotonic()
    with cell.lock(timeout=30):
        waited = time.monotonic() - start
        assert json.loads((cell.path / ".lock").read_text())["host"] != "elsewhere"
    assert 1.0 <= waited < 10


@pytest.mark.parametrize("offset_s", [-3600, 3600], ids=["past-dated", "future-dated"])
def test_a_live_holder_on_a_skewed_host_is_waited_for(tmp_path, short_lease, offset_s):
    """Its heartbeat moves (an hour behind or ahead of this host's clock): never taken over."""
    cell = Store(tmp_path).cell("abc")
    lock = cell.path / ".lock"
    _foreign_lock(lock, time.time() + offset_s)
    stop = threading.Event()

    def beat():  # the holder's heartbeat, on its own clock
        while not stop.wait(0.1):
            t = time.time() + offset_s
            os.utime(lock, (t, t))

    holder = threading.Thread(target=beat)
    holder.start()
    try:
        with pytest.raises(LockTimeout, match="held by elsewhere pid 4242"):
            with cell.lock(timeout=2.5):  # 2.5 leases
                pass
    finally:
        stop.set()
        holder.join()
    assert json.loads(lock.read_text())["host"] == "elsewhere"


# -- debris ------------------------------------------------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _temp(folder: Path, name: str, pid: int, host: str | None = None, age_s: float = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".{name}.{host_tag(host)}.{pid}.0a1b2c3d.tmp"
    path.write_bytes(b"half a file")
    os.utime(path, (time.time() - age_s,) * 2)
    return path


def test_stale_temp_files_are_removed_and_live_writers_spared(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    gone = [_temp(tmp_path, "a.json", dead), _temp(tmp_path, "b.json", 4242, "elsewhere", age_s=7200),
            tmp_path / ".c.json.4242.0a1b2c3d.tmp"]  # named before host tags, and old
    gone[2].write_bytes(b"x")
    os.utime(gone[2], (time.time() - 7200,) * 2)
    kept = [_temp(tmp_path, "d.json", alive), _temp(tmp_path, "e.json", 4242, "elsewhere"),
            temp_path(tmp_path / "f.json")]
    kept[2].write_bytes(b"being written")
    (tmp_path / "g.json").write_text("{}")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(gone)
    assert all(p.exists() for p in kept) and (tmp_path / "g.json").exists()


@pytest.mark.slow
def test_the_next_run_and_report_remove_what_killed_writers_left(tmp_path):
    """A killed writer's temp files in .plans/ and in the report's folder go with the next run or report;
    those of a writer that is alive stay."""
    assert _run("run", tmp_path)[0] == 0
    assert _run("report", tmp_path)[0] == 0
    (report,) = (tmp_path / "reports").iterdir()
    dead = _dead_pid()
    left = [_temp(tmp_path / "store" / ".plans", "0123.json", dead), _temp(report, "report.html", dead)]
    live = _temp(report, "report.md", os.getpid())
    assert _run("run", tmp_path) == (0, []) and not left[0].exists()
    assert _run("report", tmp_path) == (0, []) and not left[1].exists()
    assert live.exists()


# -- wasted work -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_scoring_one_cell_compute_each_metric_once(tmp_path):
    """Both start when no score is stored; the second waits for the first and finds its scores up to date."""
    from harness.experiment.pipeline import score
    from harness.experiment.plans import compose
    import harness.experiment.pipeline as pipeline

    assert _run("run", tmp_path)[0] == 0
    (cell,) = Store(tmp_path / "store").cells()
    for f in (cell.path / "scores").iterdir():
        f.unlink()
    cfg = compose([*CELL, f"paths.store={tmp_path / 'store'}"])
    go = tmp_path / "go"
    children = []
    for n in range(2):
        out = tmp_path / f"computed{n}"
        pid = os.fork()
        if pid == 0:
            try:
                one = pipeline._score_one

                def slow_score_one(*args):  # long enough that the two overlap
                    time.sleep(0.5)
                    return one(*args)
                pipeline._score_one = slow_score_one
                while not go.exists():
                    time.sleep(0.01)
                out.write_text(json.dumps(score(cell, cfg.metric, Path(cfg.paths.weights))))
            finally:
                os._exit(0)
        children.append((pid, out))
    go.touch()
    for pid, _ in children:
        os.waitpid(pid, 0)
    computed = [m for _, out in children for m in json.loads(out.read_text())]
    assert sorted(computed) == sorted(cfg.metric), computed
    assert sorted(cell.read_scores()) == sorted(cfg.metric)
