"""The store under sweeps: a rerun costs nothing, a SIGKILLed sweep resumes to the same table, and
two joblib workers writing one store corrupt nothing."""
import re
import signal
import subprocess
import sys
import time

from conftest import FAST, ROOT

# two batches per cell, so that a kill can land between the batches of one cell
CELLS = [o for o in FAST if not o.startswith("batch_size")] + [
    "batch_size=2", "report.metrics=[temporal_flicker,dynamics,compute.nfe]", "report.headline=[dynamics.ssim]"]
SWEEP = [*CELLS, "sampler.steps=2,3"]


def refinery(*args, wait=True):
    cmd = [sys.executable, "-m", "harness.cli", *args]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def report_table(tmp_path, store):
    out = tmp_path / f"reports-{store.name}"
    refinery("report", *SWEEP, f"paths.store={store}", f"paths.reports={out}")
    (report,) = out.glob("adhoc*/report.md")
    return report.read_text()


def test_rerun_of_a_finished_sweep_makes_no_model_call(tmp_path):
    store = tmp_path / "store"
    first = refinery("sweep", *SWEEP, f"paths.store={store}")
    assert len(re.findall(r"[1-9]\d* videos generated", first)) == 2
    again = refinery("sweep", *SWEEP, f"paths.store={store}")
    assert re.findall(r"(\d+) videos generated \((\d+) model calls\)", again) == [("0", "0")] * 2


def test_a_sweep_also_runs_its_reports_baseline_cell(tmp_path):
    store = tmp_path / "store"
    out = refinery("sweep", *SWEEP, "report.baseline='sampler.steps=4'", f"paths.store={store}")
    assert len(re.findall(r"[1-9]\d* videos generated", out)) == 3 and "sweep done: 3 cells" in out
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
    proc = refinery("sweep", *SWEEP, f"paths.store={store}", wait=False)
    deadline = time.monotonic() + timeout
    while not condition(store) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return [c for c in store.glob("cells/*") if '"complete"' not in (c / "status.json").read_text()]


def test_sigkilled_sweep_resumes_to_the_same_table(tmp_path):
    reference = tmp_path / "reference"
    refinery("sweep", *SWEEP, f"paths.store={reference}")
    expected = report_table(tmp_path, reference).replace(reference.name, "")
    interrupted = 0
    for i, condition in enumerate((first_record, first_batch_of_two, first_complete_cell)):
        store = tmp_path / f"killed{i}"
        interrupted += bool(kill_when(store, condition))
        refinery("sweep", *SWEEP, f"paths.store={store}")
        assert report_table(tmp_path, store).replace(store.name, "") == expected
    assert interrupted >= 2  # the kills really landed inside cells


def test_two_joblib_workers_share_one_store(tmp_path):
    store = tmp_path / "store"
    # every cell twice, two workers: the same cell is written by two processes at once
    refinery("sweep", *CELLS, "sampler.steps=2,3,2,3", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
             f"paths.store={store}")
    assert not list(store.rglob("*.tmp*")) and not list(store.rglob(".lock"))
    sequential = tmp_path / "sequential"
    refinery("sweep", *SWEEP, f"paths.store={sequential}")
    assert report_table(tmp_path, store).replace(store.name, "") == \
        report_table(tmp_path, sequential).replace(sequential.name, "")
