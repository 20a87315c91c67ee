"""Shards of one cell: any number of writers (processes, hosts, SLURM array tasks, `run.workers`)
share its rollout batches under per-batch claims; a dead writer's claim is taken over; the store is
the same bytes as one writer's (tests/stores.py: videos byte for byte, records without their measured
fields and the `worker` that wrote them). The SLURM form is in test_slurm.py."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from harness.cli import main
from harness.errors import UsageError
from harness.experiment.pipeline import worker_identity
from harness.engine.devices import gpus_for
from harness.store.cells import Store
from stores import claims_of_unrecorded_batches, contents, leftovers, slow_disk

# one cell of 8 videos, one per rollout batch (the unit writers claim), 1 thread
CELL = ["suite=world_smoke", "samples_per_prompt=2", "model.num_chunks=2", "sampler.steps=2", "batch_size=1",
        "threads=1"]


@pytest.fixture(scope="module")
def one_writer(tmp_path_factory):
    store = tmp_path_factory.mktemp("one") / "store"
    assert main(["run", *CELL, f"paths.store={store}"]) == 0
    return store


def _writers(store: Path) -> list[dict]:
    return [json.loads(p.read_text())["worker"] for p in sorted(store.glob("cells/*/records/*.json"))]


def _start(store: Path, slow: Path, log: Path) -> subprocess.Popen:
    """`refinery run` of CELL in the background, its every fsync slowed by slow's sitecustomize."""
    env = {**os.environ, "PYTHONPATH": f"{slow}:{ROOT}", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "harness.cli", "run", *CELL, f"paths.store={store}"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def _until(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


# -- the store's parts ------------------------------------------------------------------------------

def test_a_claim_is_skipped_while_its_holder_lives_and_taken_over_when_it_dies(tmp_path):
    cell = Store(tmp_path / "store").cell("k")
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time; sys.path.insert(0, {str(ROOT)!r})
from harness.store.cells import Store
with Store({str(tmp_path / 'store')!r}).cell("k").claim(4) as c:
    print("held" if c else "none", flush=True); time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with cell.claim(4) as claim:
            assert claim is None  # a live writer has it: skipped at once, not waited for
        assert [h.info["pid"] for h in cell.live_writers()] == [holder.pid]
        with cell.claim(5) as other:
            assert other is not None  # another batch is free
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with cell.claim(4) as claim:
        assert claim is not None and claim.owner["pid"] == os.getpid()  # the dead writer's, taken over
    assert not list((cell.path / ".claims").glob("*.lock"))


def test_a_dead_writers_claim_on_a_recorded_batch_is_removed_when_the_cell_completes(tmp_path, one_writer):
    # a writer killed after its batch's last record and before it released the claim: no later writer
    # needs that batch, so none takes the claim over; completing the cell removes it
    store = tmp_path / "store"
    subprocess.run(["cp", "-a", str(one_writer), str(store)], check=True)
    cell_path = next(store.glob("cells/*"))
    (cell_path / "records" / "00003.json").unlink()  # one batch to repair, so the cell is written again
    subprocess.run([sys.executable, "-c", f"""
import os, sys; sys.path.insert(0, {str(ROOT)!r})
from harness.store.cells import Store
with Store({str(store)!r}).cell({cell_path.name!r}).claim(1) as c:
    os._exit(0 if c else 1)
"""], check=True)
    assert [p.name for p in (cell_path / ".claims").glob("*.lock")] == ["00001.lock"]
    assert main(["run", *CELL, f"paths.store={store}"]) == 0
    assert contents(store) == contents(one_writer) and not leftovers(store)


def test_store_comparison_ignores_the_worker_field_and_nothing_else_of_a_record(tmp_path, one_writer):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(one_writer), str(copy)], check=True)
    record = next(copy.glob("cells/*/records/00003.json"))
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "worker": {"host": "elsewhere", "pid": 1, "slurm_task": "7_1",
                                                     "device": "cuda:3"}}))
    assert contents(copy) == contents(one_writer)
    record.write_text(json.dumps({**data, "seed": data["seed"] + 1}))
    assert contents(copy) != contents(one_writer)


def test_the_worker_field_names_host_pid_slurm_task_and_the_real_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "41")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    worker = worker_identity(torch.device("cuda:0"))
    assert worker["device"] == "cuda:5" and worker["slurm_task"] == "41_3" and worker["pid"] == os.getpid()
    assert worker_identity(torch.device("cpu"))["device"] == "cpu"


def test_workers_get_one_visible_gpu_each_and_more_workers_than_gpus_are_refused(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert gpus_for(True, 2, "run.workers") == ["2", "5"]
    assert gpus_for(False, 3, "run.workers") == [None, None, None]
    with pytest.raises(UsageError, match="run.workers=3 but 2 GPUs are visible"):
        gpus_for(True, 3, "run.workers")


# -- writers of one cell ------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_writers_of_one_cell_share_it_and_store_what_one_writer_does(tmp_path, one_writer, capsys):
    store = tmp_path / "store"
    first = _start(store, slow_disk(tmp_path / "slow", 0.5), tmp_path / "first.log")
    try:
        _until(lambda: any(store.glob("cells/*/records/*.json")), "the first writer's first video")
        assert main(["run", *CELL, f"paths.store={store}"]) == 0  # the second writer, while it works
        assert first.wait(timeout=120) == 0, (tmp_path / "first.log").read_text()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    pids = [w["pid"] for w in _writers(store)]
    assert set(pids) == {first.pid, os.getpid()}  # both wrote videos, nobody else did
    assert contents(store) == contents(one_writer) and not leftovers(store)


@pytest.mark.slow
def test_a_writer_killed_holding_a_claim_is_taken_over_and_the_store_is_the_same(tmp_path, one_writer, capsys):
    store = tmp_path / "store"
    first = _start(store, slow_disk(tmp_path / "slow", 0.8), tmp_path / "first.log")
    try:
        _until(lambda: any(store.glob("cells/*/records/*.json")) and claims_of_unrecorded_batches(store),
               "the first writer inside the claim of an unrecorded batch after its first video")
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    orphaned = claims_of_unrecorded_batches(store)
    assert orphaned and json.loads(orphaned[0].read_text())["pid"] == first.pid
    assert main(["run", *CELL, f"paths.store={store}"]) == 0
    assert "taking over the lock of" in capsys.readouterr().err
    assert contents(store) == contents(one_writer) and not leftovers(store)


@pytest.mark.slow
def test_run_workers_2_on_cpu_stores_what_one_writer_does(tmp_path, one_writer, monkeypatch, capsys):
    store = tmp_path / "store"
    # each worker's first video waits until both have one in hand: both provably take a share
    monkeypatch.setenv("PYTHONPATH", f"{slow_disk(tmp_path / 'slow', 0.1, barrier=2)}:{ROOT}")
    assert main(["run", *CELL, "run.workers=2", f"paths.store={store}"]) == 0
    assert "8 videos generated" in capsys.readouterr().out
    writers = _writers(store)
    assert len({w["pid"] for w in writers}) == 2 and os.getpid() not in {w["pid"] for w in writers}
    assert {w["device"] for w in writers} == {"cpu"}
    assert contents(store) == contents(one_writer) and not leftovers(store)
