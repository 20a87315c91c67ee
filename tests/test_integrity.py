"""Damage to a finished store, as a disk or a hand does it: `refinery verify` lists every damaged or
missing file with its cell, `score` and `report` refuse a damaged cell in one line, and a rerun of the
sweep regenerates exactly the damaged files, to their original bytes. And a writer killed in the
middle of a write leaves no temp file behind once the cell's next writer has run."""
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FAST, ROOT
from conftest import refinery_here as refinery
from harness.store.cells import Store

pytestmark = pytest.mark.slow  # a CLI sweep, damaged and repaired; a writer process killed
from stores import contents, leftovers

# 4 cells (one per seed) of 4 videos in 2 batches of 2, scored with the cheap metrics
CELLS = [o for o in FAST if not o.startswith("batch_size")] + [
    "batch_size=2", "~metric.world_bench", "~metric.world_alignment", "report.metrics=[temporal_flicker,dynamics]",
    "report.headline=[dynamics.ssim]"]
SWEEP = [*CELLS, "seed=0,1,2,3"]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _garbage(path: Path) -> None:
    path.write_text("{not json")


DAMAGE = [  # (seed of the cell, file, what is done to it, what verify says)
    (0, "videos/00001.npy", _truncate, "bytes where the manifest says"),  # in the first batch
    (0, "records/00003.json", Path.unlink, "is missing"),  # in the second
    (1, "videos/00002.npy", Path.unlink, "is missing"),
    (1, "spec.json", _garbage, "is not JSON"),
    (2, "scores/dynamics.json", _garbage, "bytes where the manifest says"),
    (2, "scores/temporal_flicker.json", Path.unlink, "is missing"),
    (3, "status.json", lambda p: p.write_text("[1,2]"), "is not a status object"),
]
GENERATED = {0: 4, 1: 2, 2: 0, 3: 0}  # the videos of the batches that hold a damaged video or record
REPAIRED_RECORD = 0  # the seed whose record is regenerated: its measured times are new, so are its scores


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    store = tmp_path_factory.mktemp("reference") / "store"
    result = refinery("sweep", *SWEEP, f"paths.store={store}")
    assert result.returncode == 0, result.stdout + result.stderr
    return store


def cell_of_seed(store: Path) -> dict[int, Path]:
    return {json.loads((cell / "spec.json").read_text())["seeds"][0]: cell for cell in store.glob("cells/*")}


def files(store: Path) -> dict[str, tuple[int, int]]:
    """Each file's inode and modification time: a file rewritten (atomically, by rename) changes both."""
    return {str(p.relative_to(store)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in (store / "cells").rglob("*") if p.is_file()}


def one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stdout + result.stderr
    return lines[0]


def test_damage_is_listed_refused_and_repaired_to_the_original_bytes(reference, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(reference, store)
    cells = cell_of_seed(store)
    for seed, file, damage, _ in DAMAGE:
        damage(cells[seed] / file)
    before = files(store)

    verify = refinery("verify", f"paths.store={store}")
    assert "7 files of 4 cells damaged or missing" in one_line_error(verify)
    listed = re.findall(r"^cell (\w+): (\S+) (.+)$", verify.stdout, flags=re.M)
    damaged = {(cell, file): problem for cell, file, problem in listed if "/" in file or file.endswith(".json")}
    assert set(damaged) == {(cells[seed].name, file) for seed, file, *_ in DAMAGE}, verify.stdout
    for seed, file, _, problem in DAMAGE:
        assert problem in damaged[cells[seed].name, file]
    assert f"cell {cells[0].name}: to repair, rerun `refinery run " in verify.stdout  # the cell's own command

    for command in ("score", "report"):  # each stops at the first damaged cell of the sweep, seed 0's
        error = one_line_error(refinery(command, *SWEEP, f"paths.store={store}", f"paths.reports={tmp_path}"))
        assert error.startswith(f"refinery: error: {cells[0] / 'records/00003.json'} is missing (and 1 more: "
                                "`refinery verify` lists them); rerun `refinery run "), error
        assert error.endswith(f" seed=0 paths.store={store}` to regenerate it"), error  # where the store is now
    assert not (tmp_path / "adhoc").exists()  # the refused report wrote nothing

    rerun = refinery("sweep", *SWEEP, f"paths.store={store}")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    made = dict(re.findall(r"cell (\w+): (\d+) videos generated", rerun.stdout))
    assert {seed: int(made[cell.name]) for seed, cell in cells.items()} == GENERATED
    assert contents(store) == contents(reference) and not leftovers(store)
    _assert_only_the_damage_was_rewritten(store, reference, before, cells)
    assert refinery("verify", f"paths.store={store}").returncode == 0


def _assert_only_the_damage_was_rewritten(store, reference, before, cells) -> None:
    after = files(store)
    repaired_record = cells[REPAIRED_RECORD].relative_to(store)
    for name, stamp in before.items():
        path = Path(name)
        if path.name in ("status.json", "manifest.json") or repaired_record in path.parents and "scores" in name:
            continue
        damaged = any(path == cells[seed].relative_to(store) / file for seed, file, *_ in DAMAGE)
        assert (after[name] != stamp) == damaged, f"{name} was {'not ' if damaged else ''}rewritten"
        if not (damaged and repaired_record in path.parents):
            assert (store / name).read_bytes() == (reference / name).read_bytes(), name


def test_a_kill_during_a_write_leaves_no_temp_file_after_the_next_run(tmp_path):
    store = tmp_path / "store"
    # a disk that takes its time to sync gives the kill a write to land in
    slow = ("import os, sys, time; sync = os.fsync; os.fsync = lambda fd: (time.sleep(0.3), sync(fd))[1];"
            "from harness.cli import main; sys.exit(main(sys.argv[1:]))")
    writer = subprocess.Popen([sys.executable, "-c", slow, "run", *FAST, f"paths.store={store}"], cwd=ROOT,
                              env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(store.glob("cells/*/videos/.*.tmp")) and writer.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert list(store.glob("cells/*/videos/.*.tmp"))  # killed in the middle of writing a video
    result = refinery("run", *FAST, f"paths.store={store}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not leftovers(store)
    (cell,) = Store(store).cells()
    assert cell.state() == "complete" and cell.damage() == []
