"""The store under sweeps: a rerun costs nothing, a SIGKILLed sweep resumes to the same table, two
joblib workers writing one store corrupt nothing and write the bytes the basic launcher writes, and
killing a sweep takes its workers down with it."""
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import FAST, ROOT, refinery_here
from harness.store.lease import pid_alive
from harness.store.cells import Store
from stores import contents, leftovers

pytestmark = pytest.mark.slow  # CLI sweeps, in subprocesses where they are killed or run by joblib

# two batches per cell, so that a kill can land between the batches of one cell
CELLS = [o for o in FAST if not o.startswith(("batch_size", "sampler.steps"))] + [
    "batch_size=2", "report.metrics=[temporal_flicker,dynamics,compute.nfe]", "report.headline=[dynamics.ssim]"]
SWEEP = [*CELLS, "sampler.steps=2,3"]


def refinery(*args) -> str:
    """`refinery ARGS` in this process; what it printed."""
    result = refinery_here(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def start_refinery(*args, path=str(ROOT)) -> subprocess.Popen:
    """`refinery ARGS` in a process of its own, to be killed; `path`: its PYTHONPATH."""
    env = {"PYTHONPATH": path, "PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def report_table(tmp_path, store):
    """The report's markdown table of SWEEP over `store`, made in this process (refinery's Python API:
    what a report says depends on the store, not on the process that writes it)."""
    import refinery

    out = tmp_path / f"reports-{store.name}"
    refinery.report([*SWEEP, f"paths.store={store}", f"paths.reports={out}"])
    (report,) = out.glob("adhoc*/report.md")
    return report.read_text().replace(str(store), "<store>")


@dataclass
class Reference:
    store: Path
    said: str  # what the sweep printed
    table: str  # its report
    contents: dict


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """SWEEP run once by the basic launcher into a fresh store: what every other way of filling a
    store must reproduce."""
    tmp = tmp_path_factory.mktemp("reference")
    store = tmp / "store"
    said = refinery("sweep", *SWEEP, f"paths.store={store}")
    return Reference(store, said, report_table(tmp, store), contents(store))


def test_rerun_of_a_finished_sweep_makes_no_model_call_and_changes_nothing(reference):
    assert len(re.findall(r"[1-9]\d* videos generated", reference.said)) == 2
    again = refinery("sweep", *SWEEP, f"paths.store={reference.store}")
    assert re.findall(r"(\d+) videos generated \((\d+) model calls\)", again) == [("0", "0")] * 2
    assert contents(reference.store) == reference.contents


def test_a_sweep_also_runs_its_reports_baseline_cell(tmp_path, reference):
    store = tmp_path / "store"
    shutil.copytree(reference.store, store)  # copy2 keeps the files' times: the two cells stay finished
    out = refinery("sweep", *SWEEP, "report.baseline='sampler.steps=4'", f"paths.store={store}")
    assert len(re.findall(r"[1-9]\d* videos generated", out)) == 1 and "sweep done: 3 cells" in out
    inside = refinery("sweep", *SWEEP, "report.baseline='sampler.steps=3'", f"paths.store={store}")
    assert "sweep done: 2 cells" in inside  # a baseline the sweep contains is not run twice


def first_record(store):
    return any(store.glob("cells/*/records/*.json"))


def first_batch_of_two(store):
    return any(len(list(cell.glob("records/*.json"))) >= 2 for cell in store.glob("cells/*"))


def first_complete_cell(store):
    return any('"complete"' in p.read_text() for p in store.glob("cells/*/status.json"))


def kill_when(store, condition, timeout=120.0):
    """Start a sweep and SIGKILL it the moment `condition(store)` holds."""
    proc = start_refinery("sweep", *SWEEP, f"paths.store={store}")
    deadline = time.monotonic() + timeout
    while not condition(store) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return [c for c in store.glob("cells/*") if '"complete"' not in (c / "status.json").read_text()]


@pytest.mark.parametrize("condition", [first_record, first_batch_of_two, first_complete_cell],
                         ids=lambda c: c.__name__)
def test_a_sigkilled_sweep_resumes_to_the_same_table(tmp_path, reference, condition):
    store = tmp_path / "store"
    interrupted = kill_when(store, condition)
    if condition is not first_complete_cell:
        assert interrupted  # the kill really landed inside a cell
    refinery("sweep", *SWEEP, f"paths.store={store}")
    assert report_table(tmp_path, store) == reference.table


def test_two_joblib_workers_share_one_store_and_write_the_basic_launchers_bytes(tmp_path, reference):
    store = tmp_path / "store"
    # every cell twice, two workers: the same cell is written by two processes at once. A joblib worker
    # is limited to one thread (OMP_NUM_THREADS=1) while the basic launcher has two cores: the cells
    # compute with the spec's threads all the same (at batch 2 one thread gives other bits)
    proc = start_refinery("sweep", *CELLS, "sampler.steps=2,3,2,3", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                          f"paths.store={store}")
    said, _ = proc.communicate()
    assert proc.returncode == 0, said.decode()
    assert not leftovers(store)
    assert contents(store) == reference.contents
    assert report_table(tmp_path, store) == reference.table


# A disk that takes 0.5 s per fsync: the rest of a cell after its first video (3 videos and records)
# takes seconds, however fast the CPU, so a kill at the first video lands well before the last.
SLOW_DISK = """import os, time
_sync = os.fsync
os.fsync = lambda fd: (time.sleep(0.5), _sync(fd))[1]
"""


def descendants(pid: int) -> list[int]:
    """Every live process below pid."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            child, parent = int(stat.parent.name), int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return [p for p in found if pid_alive(p)]


@pytest.mark.parametrize("launcher", [["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
                                      ["hydra/launcher=submitit_local"]], ids=["joblib", "submitit_local"])
def test_killing_a_sweep_takes_its_workers_down(tmp_path, launcher):
    store, slow = tmp_path / "store", tmp_path / "slow_disk"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(SLOW_DISK)  # every Python process of the sweep imports it
    proc = start_refinery("sweep", *SWEEP, "threads=1", *launcher, f"paths.store={store}",
                          f"paths.jobs={tmp_path / 'jobs'}", path=f"{slow}:{ROOT}")
    deadline = time.monotonic() + 300
    while not first_record(store) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    workers = descendants(proc.pid)
    assert workers and proc.poll() is None  # the sweep is running cells in processes of its own
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60
    while any(pid_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in workers if pid_alive(p)], "workers outlived their sweep"
    states = [cell.state() for cell in Store(store).cells()]
    assert "interrupted" in states  # they stopped inside a cell rather than finishing it
    assert "running" not in states
