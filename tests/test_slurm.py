"""Sweeps on a real SLURM cluster: one node, its daemons (munged, slurmctld, slurmd) started by this
module as ordinary processes and stopped by PID (tests/slurm_cluster.py). A sweep through
hydra/launcher=slurm fills the store byte for byte as the basic launcher does, an array task killed
mid-cell is finished by a rerun to the same store, and a SLURM sweep that cannot work is refused in
one line. `make test-slurm` runs this module alone."""
import json
import re
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import FAST, ROOT, refinery_here
from slurm_cluster import SlurmCluster, missing_programs
from stores import claims_of_unrecorded_batches, contents, leftovers

pytestmark = pytest.mark.slow  # sweeps on a one-node SLURM cluster

# 2 cells of 8 videos, one video per batch (so that a kill lands between batches), 1 thread each:
# cpus_per_task follows threads, so the node's 2 CPUs run both array tasks at once
CELLS = [o for o in FAST if not o.startswith(("batch_size", "samples_per_prompt", "sampler.steps"))] + [
    "samples_per_prompt=2", "batch_size=1", "threads=1"]
SWEEP = [*CELLS, "sampler.steps=2,3"]
SLURM = ["hydra/launcher=slurm", "hydra.launcher.partition=debug"]
# A scancel ends a task about 5 s after it is sent (SIGTERM, which submitit's job wrapper ignores, then
# SIGKILL). A disk that takes 0.8 s per fsync makes the rest of a cell take longer than that after its
# first video (7 videos and records to go: 11 s), however fast the CPU.
SLOW_DISK = """import os, time
_sync = os.fsync
os.fsync = lambda fd: (time.sleep(0.8), _sync(fd))[1]
"""


def _why_no_cluster() -> str | None:
    missing = missing_programs()
    if missing:
        return (f"the SLURM tests need Debian's slurm-wlm and munge (missing: {', '.join(missing)}); "
                "apt-get install -y --no-install-recommends slurm-wlm munge")
    if os.geteuid() != 0:
        return "the test cluster runs slurmd as root (SlurmdUser=root), as CI does; run the tests as root"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = _why_no_cluster()
    if why and os.environ.get("CI"):
        pytest.fail(f"in CI, which must run them: {why} (.ci/run installs the packages)", pytrace=False)
    if why:
        pytest.skip(why)
    cluster = SlurmCluster.start(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.stop()
    alive = [name for name, pid in cluster.pids().items() if Path(f"/proc/{pid}").exists()]
    assert not alive, f"daemons still running after stop: {alive}"


def refinery(env, cwd, *args) -> subprocess.CompletedProcess:
    """Run the CLI in `cwd` with the environment `env`, in this process (the jobs it submits are
    processes of SLURM's)."""
    return refinery_here(*args, cwd=cwd, env={**env, "PYTHONPATH": str(ROOT)})


def start_refinery(env, cwd, *args, path: str, log: Path) -> subprocess.Popen:
    """The CLI started in the background in a process of its own, `path` its PYTHONPATH, its output
    going to the file `log` (a pipe that nobody reads until the end would fill up and block it)."""
    env = {**env, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT, text=True, preexec_fn=default_ctrl_c)


def default_ctrl_c() -> None:
    """In the child: Ctrl-C as a user's shell leaves it (delivered, default action), whatever the test
    process's own disposition or signal mask is."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="module")
def local_store(tmp_path_factory):
    """The same sweep under the basic launcher: what every SLURM run must reproduce."""
    store = tmp_path_factory.mktemp("local") / "store"
    result = refinery(os.environ, ROOT, "sweep", *SWEEP, f"paths.store={store}")
    assert result.returncode == 0, result.stdout + result.stderr
    return store


def empty_folder(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    return work


def test_a_slurm_sweep_fills_the_store_as_the_basic_launcher(cluster, local_store, tmp_path):
    store, work = tmp_path / "store", empty_folder(tmp_path)
    jobs = tmp_path / "jobs"
    result = refinery(cluster.env, work, "sweep", *SWEEP, *SLURM, f"paths.store={store}", f"paths.jobs={jobs}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert contents(store) == contents(local_store) and not leftovers(store)
    logs = sorted(jobs.glob("*/*/*_*/*_log.out"))  # <store digest>/<time>/<array task>/: one folder per task
    assert len(logs) == 2 and all("videos generated" in log.read_text() for log in logs)
    assert not list(store.rglob("*.pkl")) and list(jobs.rglob("*.pkl"))  # submitit's pickles: never in the store
    assert not any(work.iterdir())  # logs go to paths.jobs and Hydra's files under the store, not the working folder


def test_a_sharded_slurm_sweep_fills_the_store_as_the_basic_launcher(cluster, local_store, tmp_path):
    """launcher.shards=2: two array tasks per cell share its videos; the store is the same."""
    store, work, jobs = tmp_path / "store", empty_folder(tmp_path), tmp_path / "jobs"
    result = refinery(cluster.env, work, "sweep", *SWEEP, *SLURM, "launcher.shards=2", f"paths.store={store}",
                      f"paths.jobs={jobs}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert contents(store) == contents(local_store) and not leftovers(store)
    logs = sorted(jobs.glob("*/*/*_*/*_log.out"))  # <store digest>/<time>/<array task>/
    assert len(logs) == 4  # 2 cells x 2 shards, one array task each
    tasks = {json.loads(p.read_text())["worker"]["slurm_task"] for p in store.glob("cells/*/records/*.json")}
    assert all(t and "_" in t for t in tasks)  # every record names the array task that wrote it


def _until(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def _running_cell(store: Path, timeout: float = 300) -> tuple[Path, dict]:
    """The first cell with a record whose status says running and the claim of an unrecorded batch: an
    array task in the middle of a cell's batch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for cell in store.glob("cells/*"):
            try:
                status = json.loads((cell / "status.json").read_text())
            except (OSError, ValueError):
                continue
            if (status["state"] == "running" and any(cell.glob("records/*.json"))
                    and claims_of_unrecorded_batches(store)):
                return cell, status
        time.sleep(0.01)
    raise AssertionError(f"no array task got into a cell within {timeout} s")


def test_an_array_task_cancelled_mid_cell_is_finished_by_a_rerun(cluster, local_store, tmp_path):
    store, work, slow = tmp_path / "store", empty_folder(tmp_path), tmp_path / "slow_disk"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(SLOW_DISK)  # every Python process of this sweep imports it
    one_cell = [*CELLS, "sampler.steps=2"]  # one of local_store's cells
    jobs = f"paths.jobs={tmp_path / 'jobs'}"
    sweep = start_refinery(cluster.env, work, "sweep", *one_cell, *SLURM, f"paths.store={store}", jobs,
                           path=f"{slow}:{ROOT}", log=tmp_path / "sweep.log")
    try:
        cell, status = _running_cell(store)
        subprocess.run(["scancel", status["job"]], env=cluster.env, check=True)
        _until(lambda: not Path(f"/proc/{status['pid']}").exists(), "the cancelled task to end")
        assert 0 < len(list(cell.glob("records/*.json"))) < 8  # the cancel landed inside the cell
        # Without SLURM accounting (sacct) submitit cannot tell a cancelled task from a running one and
        # waits for it: stop the sweep as its user would, with Ctrl-C
        sweep.send_signal(signal.SIGINT)
        assert sweep.wait(timeout=120) != 0
    finally:
        if sweep.poll() is None:  # a failed assertion leaves no sweep waiting for ever
            sweep.kill()
            sweep.wait()
    verify = refinery(cluster.env, work, "verify", f"paths.store={store}")
    assert f"cell {cell.name}: interrupted" in verify.stdout and "refinery run" in verify.stdout, verify.stdout
    again = refinery(cluster.env, work, "sweep", *one_cell, *SLURM, f"paths.store={store}", jobs)
    assert again.returncode == 0, again.stdout + again.stderr
    expected = {f: c for f, c in contents(local_store).items() if f.startswith(f"cells/{cell.name}/")}
    assert contents(store) == expected and not leftovers(store)
    job_logs = "".join(p.read_text() for p in (tmp_path / "jobs").glob("*/*/*/*_log.err"))
    # the killed task's claim on its batch, taken over by PID
    assert re.search(rf"cell {cell.name} videos from \d+: taking over the lock of", job_logs), job_logs
    assert not any(work.iterdir())


BAD_INPUT = {
    "unknown partition": (["hydra.launcher.partition=nope"], "unknown SLURM partition 'nope'"),
    "store only this host sees": (["hydra.launcher.partition=multi"], "which the other nodes of partition multi"),
    "job pickles only this host sees": (["paths.jobs=/dev/shm/refinery-test-jobs", "hydra.launcher.partition=multi"],
                                        "paths.jobs=/dev/shm/refinery-test-jobs/"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_a_slurm_sweep_that_cannot_work_is_refused_in_one_line(cluster, tmp_path, case):
    overrides, expected = BAD_INPUT[case]
    # /dev/shm is memory of this host: the partition `multi` also has the node `ghost`; a store the
    # nodes could share (under the home folder) where the case is about something else
    name = f"refinery-test-{uuid.uuid4().hex[:8]}"
    store = (Path("/dev/shm") / name if overrides[0].startswith("hydra.launcher.partition=multi")
             else Path.home() / ".cache" / name if "hydra.launcher.partition=multi" in overrides else tmp_path / "s")
    try:
        result = refinery(cluster.env, tmp_path, "sweep", *SWEEP, "hydra/launcher=slurm", *overrides,
                          f"paths.store={store}")
        assert result.returncode == 2, result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], result.stderr
        assert not store.exists()  # refused before anything is written or submitted
    finally:
        subprocess.run(["rm", "-rf", str(store)], check=True)


def test_a_slurm_sweep_without_sbatch_is_refused_in_one_line(tmp_path):
    """Needs no cluster: a PATH without SLURM's programs."""
    result = refinery({"PATH": str(tmp_path)}, tmp_path, "sweep", *SWEEP, "hydra/launcher=slurm",
                      f"paths.store={tmp_path / 's'}")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs SLURM's sbatch on PATH" in lines[0], result.stderr


def test_a_training_job_runs_two_gloo_ranks_that_train_as_one_process_accumulating(cluster, tmp_path):
    """`refinery train train.slurm=...`: one SLURM job of 2 tasks on this CPU node, each a gloo rank
    (submitit's TorchDistributedEnvironment), trains the weights one process trains with one video per
    micro-batch, bit for bit, and only rank 0 writes."""
    import torch
    from safetensors.torch import load_file

    settings = ["method=lora", "model.num_chunks=2", "sampler.steps=2", "train.batch=2", "train.steps=1",
                "train.threads=1"]
    one = tmp_path / "one" / "lora_reward.safetensors"
    alone = refinery(os.environ, ROOT, "train", *settings, "train.micro_batch=1", f"train.out={one}")
    assert alone.returncode == 0, alone.stderr
    two = tmp_path / "two" / "lora_reward.safetensors"
    job = refinery(cluster.env, ROOT, "train", *settings, f"train.out={two}",
                   "train.slurm={nodes: 1, tasks_per_node: 2, partition: debug}")
    assert job.returncode == 0, job.stdout + job.stderr
    a, b = load_file(str(two)), load_file(str(one))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b)
    logs = list(two.parent.glob("lora_reward.slurm/*/*_log.out"))
    assert len(logs) == 2  # one per task
    assert len((two.parent / "lora_reward.log.jsonl").read_text().splitlines()) == 1  # rank 0's line only
