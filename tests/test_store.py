import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import harness.store.lease
from conftest import ROOT
from harness.errors import UsageError
from harness.store.lease import LeaseLost
from harness.store.files import atomic_write_bytes, atomic_write_json
from harness.store.cells import LockTimeout, Store, cell_key


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
    cell.write_manifest(3)
    cell.write_scores("dyn", payload)
    assert cell.read_scores() == {"dyn": payload}
    assert "scores/dyn.json" in cell.manifest()["files"]  # the manifest vouches for the new score file
    cell.set_status("complete")
    assert cell.is_complete() and cell.state() == "complete"


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
    with pytest.raises(UsageError, match="status.json is corrupt") as error:
        cell.status()
    assert "delete" not in str(error.value)  # the advice is a rerun, which repairs it
    video = cell.path / "videos" / "00000.npy"
    video.write_bytes(video.read_bytes()[:-5])
    with pytest.raises(UsageError, match="00000.npy is corrupt.*rerun") as error:
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


def test_live_lock_of_this_host_is_waited_for(tmp_path):
    cell = Store(tmp_path).cell("abc")
    cell.path.mkdir(parents=True)
    lock = cell.path / ".lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "token": "t"}))  # alive
    with pytest.raises(LockTimeout, match=r"\.lock is held by .* pid %d" % os.getppid()):
        with cell.lock(timeout=0.3):
            pass
    lock.unlink()
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


@pytest.mark.slow
def test_lock_serialises_processes(tmp_path):
    cell = Store(tmp_path).cell("abc")
    cell.path.mkdir(parents=True)
    (cell.path / "counter").write_text("0")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_increment, args=(str(cell.path), 50)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)  # a bound for a deadlock, not a speed: the machine may be loaded
    assert [p.exitcode for p in procs] == [0, 0]
    assert (cell.path / "counter").read_text() == "100"


# -- leases ----------------------------------------------------------------------------------------


@pytest.fixture
def said(monkeypatch):
    """The lines the lease code prints, as a list (and an event set at each)."""
    lines, event = [], threading.Event()

    def say(line):
        lines.append(line)
        event.set()

    monkeypatch.setattr(harness.store.lease, "say", say)
    return lines, event


def _foreign_lock(cell, heartbeat_age_s: float) -> Path:
    """A lock left by pid 4242 of host `elsewhere` (SLURM job 77), whose last heartbeat was that long ago."""
    cell.path.mkdir(parents=True, exist_ok=True)
    lock = cell.path / ".lock"
    since = time.time() - heartbeat_age_s - 5
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 4242, "job": "77", "token": "t", "since": since}))
    then = time.time() - heartbeat_age_s
    os.utime(lock, (then, then))
    return lock


def test_foreign_hosts_stale_lock_is_taken_over_with_one_line(tmp_path, said, monkeypatch):
    """A lock whose time is older than a lease, unchanged for two heartbeats while watched."""
    monkeypatch.setattr(harness.store.lease, "HEARTBEAT_S", 0.5)
    cell = Store(tmp_path).cell("abc")
    _foreign_lock(cell, heartbeat_age_s=harness.store.lease.LEASE_S + 1)
    start = time.monotonic()
    with cell.lock(timeout=5):
        assert json.loads((cell.path / ".lock").read_text())["host"] == socket.gethostname()
    assert time.monotonic() - start >= 1.0  # watched for 2 heartbeats first
    lines, _ = said
    assert len(lines) == 2 and lines[0].startswith("cell abc: waiting for elsewhere pid 4242")
    assert lines[0].endswith("(taken over if no heartbeat is seen for 1 s)")
    assert lines[1].startswith("cell abc: taking over the lock of elsewhere pid 4242 (SLURM job 77)")
    assert "(no heartbeat seen for 1 s; a lease lasts 60 s)" in lines[1]


def test_foreign_hosts_fresh_lock_is_waited_for_with_who_and_since(tmp_path, said):
    cell = Store(tmp_path).cell("abc")
    lock = _foreign_lock(cell, heartbeat_age_s=0)
    since = harness.store.lease.iso(json.loads(lock.read_text())["since"])
    with pytest.raises(LockTimeout, match="held by elsewhere pid 4242"):
        with cell.lock(timeout=0.5):
            pass
    lines, _ = said
    assert len(lines) == 1  # one line per holder, not one per poll
    assert lines[0].startswith(f"cell abc: waiting for elsewhere pid 4242 (SLURM job 77), holding it since {since}")
    assert lock.exists()  # a live holder's lock is never removed


def test_a_waiter_gets_the_lock_when_its_foreign_holder_releases(tmp_path, said):
    cell = Store(tmp_path).cell("abc")
    lock = _foreign_lock(cell, heartbeat_age_s=0)
    lines, event = said
    got = threading.Event()

    def wait_for_it():
        with cell.lock(timeout=120):
            got.set()

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    assert event.wait(60) and "waiting for elsewhere" in lines[0]
    assert not got.is_set()
    lock.unlink()  # the holder finishes
    waiter.join(120)
    assert got.is_set() and len(lines) == 1


@pytest.mark.slow
def test_heartbeat_keeps_a_foreign_holders_lease(tmp_path, monkeypatch):
    """A holder elsewhere whose heartbeat thread runs is never taken over, even after several leases."""
    cell = Store(tmp_path).cell("abc")
    monkeypatch.setattr(harness.store.lease, "HEARTBEAT_S", 0.1)
    monkeypatch.setattr(harness.store.lease.socket, "gethostname", lambda: "elsewhere")
    waiter = ("import sys; import harness.store.lease as l; from harness.store.cells import Store, LockTimeout;"
              "l.LEASE_S = 2.0; cell = Store(sys.argv[1]).cell('abc')\n"
              "try:\n  cell.lock(timeout=6).__enter__(); print('took it')\n"
              "except LockTimeout: print('timed out')")
    with cell.lock():
        first = (cell.path / ".lock").stat().st_mtime
        out = subprocess.run([sys.executable, "-c", waiter, str(tmp_path)], capture_output=True, text=True,
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert (cell.path / ".lock").stat().st_mtime > first  # the heartbeat moved
    assert out.stdout.strip() == "timed out", out.stderr
    assert "waiting for elsewhere pid" in out.stderr


def test_a_holder_whose_lease_was_taken_over_stops_and_leaves_the_new_lock(tmp_path, monkeypatch):
    cell = Store(tmp_path).cell("abc")
    monkeypatch.setattr(harness.store.lease, "HEARTBEAT_S", 0.05)
    with cell.lock() as lease:
        lock = cell.path / ".lock"
        lock.unlink()  # what a waiter does when this holder's heartbeat lapsed ...
        lock.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "new", "since": time.time()}))
        deadline = time.monotonic() + 60
        while lease.lost_to is None and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(LeaseLost, match="elsewhere pid 1"):
            lease.check()
    assert json.loads(lock.read_text())["token"] == "new"  # release left the successor's lock alone


def test_a_claim_is_taken_when_a_finishing_writer_removes_the_empty_folder_of_claims(tmp_path, monkeypatch):
    """Cell.tidy_claims of a writer that completed the cell may remove .claims/ between another
    writer's look at it and its create of a claim (a CI failure, FileNotFoundError): the claim is
    taken all the same."""
    cell = Store(tmp_path).cell("abc")
    (cell.path / ".claims").mkdir(parents=True)
    real_open, removed = os.open, []

    def open_after_tidy(path, *args):
        if str(path).endswith("00003.lock") and not removed:
            cell.tidy_claims()
            removed.append(not (cell.path / ".claims").exists())
        return real_open(path, *args)

    monkeypatch.setattr(os, "open", open_after_tidy)
    with cell.claim(3) as claim:
        assert claim is not None and (cell.path / ".claims" / "00003.lock").exists()
    assert removed == [True]


def test_lock_is_reentrant_within_a_process(tmp_path):
    cell = Store(tmp_path).cell("abc")
    with cell.lock() as outer:
        with cell.lock(timeout=0) as inner:
            assert inner is outer
        assert (cell.path / ".lock").exists()
    assert not (cell.path / ".lock").exists()


def test_a_running_cell_whose_holder_is_gone_is_interrupted(tmp_path):
    cell = Store(tmp_path).cell("abc")
    with cell.lock():
        cell.set_status("running", resume="refinery run seed=3")
        assert cell.state() == "running"
    assert cell.state() == "interrupted" and cell.resume_command() == f"refinery run seed=3 paths.store={tmp_path}"
    _foreign_lock(cell, heartbeat_age_s=0)
    assert cell.state() == "running"  # a live holder elsewhere
    _foreign_lock(cell, heartbeat_age_s=harness.store.lease.LEASE_S + 1)
    assert cell.state() == "interrupted"


def test_the_next_holder_removes_temp_files_of_a_killed_writer(tmp_path):
    cell = Store(tmp_path).cell("abc")
    cell.write_video(0, np.zeros((1, 2, 2, 3), np.uint8), {"prompt": "p"})
    left = [cell.path / "videos" / ".00001.npy.4242.0a1b2c3d.tmp", cell.path / ".status.json.7.00ff00ff.tmp"]
    for path in left:
        path.write_bytes(b"half a file")
    with cell.lock():
        pass
    assert not any(p.exists() for p in left)
    assert sorted(p.name for p in (cell.path / "videos").iterdir()) == ["00000.npy"]


# -- manifest and damage ---------------------------------------------------------------------------


def _complete_cell(tmp_path) -> "Cell":
    spec = _spec()
    cell = Store(tmp_path).cell(cell_key(spec))
    with cell.lock():
        cell.write_spec(spec)
        for i in range(2):
            cell.write_video(i, np.full((2, 4, 4, 3), i, np.uint8), {"index": i, "seed": i})
        cell.write_manifest(2)
        cell.set_status("complete", resume="refinery run seed=0")
    cell.write_scores("dyn", {"metric": "dyn", "version": "1", "higher_is_better": {"s": True},
                              "values": {"s": [0.5, 0.25]}, "videos": 2})
    return cell


DAMAGE = {
    "truncated video": ("videos/00001.npy", lambda p: p.write_bytes(p.read_bytes()[:-7]), "has 217 bytes where the manifest says 224"),
    "flipped byte": ("videos/00000.npy", lambda p: p.write_bytes(p.read_bytes()[:-1] + b"\x07"), "differs from"),
    "deleted video": ("videos/00000.npy", Path.unlink, "is missing"),
    "deleted record": ("records/00001.json", Path.unlink, "is missing"),
    "garbage spec": ("spec.json", lambda p: p.write_text("{garbage"), "is not JSON"),
    "another cell's spec": ("spec.json", lambda p: p.write_text('{"a": 1}'), "is not this cell's spec"),
    "garbage score": ("scores/dyn.json", lambda p: p.write_text("[]"), "has 2 bytes where"),
    "deleted score": ("scores/dyn.json", Path.unlink, "is missing"),
    "status [1,2]": ("status.json", lambda p: p.write_text("[1,2]"), "is not a status object"),
    "deleted manifest": ("manifest.json", Path.unlink, "is missing, though the cell is complete"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damage_names_exactly_the_damaged_file(tmp_path, case):
    cell = _complete_cell(tmp_path)
    assert cell.damage() == []
    file, damage, problem = DAMAGE[case]
    damage(cell.path / file)
    found = cell.damage()
    assert [(d.cell, d.file) for d in found] == [(cell.key, file)] and found[0].problem.startswith(problem)
    with pytest.raises(UsageError) as error:
        cell.refuse_damage()
    fix = "rerun `refinery score`" if file.startswith("scores/") else f"rerun `refinery run seed=0 paths.store={tmp_path}`"
    if file == "status.json":
        fix = "rerun the `refinery run` or `sweep`"  # its recorded command is what was damaged
    assert str(error.value).startswith(f"{cell.path / file} {problem}") and fix in str(error.value)
    if file.startswith(("videos/", "records/")):
        index = int(Path(file).stem)
        assert cell.unusable([0, 1]) == {index: {"video" if file.startswith("videos/") else "record"}}
    else:
        assert cell.unusable([0, 1]) == {}


def test_a_repair_that_reproduces_every_byte_keeps_the_scores(tmp_path):
    cell = _complete_cell(tmp_path)
    before = cell.manifest()
    video = cell.video_path(1)
    data = video.read_bytes()
    video.unlink()
    atomic_write_bytes(video, data)  # regenerated with the same bytes
    cell.write_manifest(2)
    assert _contents(cell.manifest()) == _contents(before) and set(cell.read_scores()) == {"dyn"}


def _contents(manifest: dict) -> dict:
    """A manifest without its files' times (a rewritten file has a new one)."""
    return {f: (e["sha256"], e["size"]) for f, e in manifest["files"].items()}


def test_a_rewritten_record_leaves_the_scores_stale(tmp_path):
    cell = _complete_cell(tmp_path)
    cell.write_record(1, {"index": 1, "seed": 1, "ledger": {"wall_seconds": 0.3}})  # measured anew
    cell.write_manifest(2)
    assert cell.damage() == [] and cell.read_scores() == {}
    assert "scores/dyn.json" not in cell.manifest()["files"]


def test_a_damaged_spec_is_rewritten_and_a_different_one_refused(tmp_path):
    spec = _spec()
    cell = Store(tmp_path).cell(cell_key(spec))
    cell.write_spec(spec)
    original = (cell.path / "spec.json").read_bytes()
    (cell.path / "spec.json").write_text('{"seeds": [9]}')  # valid JSON, but not what the key hashes
    cell.write_spec(spec)
    assert (cell.path / "spec.json").read_bytes() == original
    with pytest.raises(UsageError, match="different spec"):
        cell.write_spec(_spec(seeds=[5]))
