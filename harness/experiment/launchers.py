"""What Refinery adds around Hydra's launchers, without scheduling anything itself: a preflight of the
joblib and SLURM launchers (a number of workers; sbatch on PATH, a known partition, a store its nodes
can see), refused in one line before anything is written or submitted; a private folder for
submitit's job pickles; and workers that stop when the sweep that started them is killed.

submitit pickles each job (the function and its config) into its folder, and the job, on this host or
a SLURM node, unpickles it: those files are code. They go to a per-user folder, `paths.jobs` (by
default ~/.cache/refinery/submitit, $XDG_CACHE_HOME honoured), one subfolder per store, created with
mode 0700; a folder that group or others can enter or write, or that another user owns, is refused,
since whoever can write there can run code as the sweep's user. The shared store holds no pickle.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import re
import shutil
import stat
import socket
import subprocess
import threading
from pathlib import Path

from omegaconf import DictConfig

from harness.errors import UsageError
from harness.store.lease import say

SWEEP_ENV = "REFINERY_SWEEP"  # host:pid of the sweep process, inherited by every worker it starts
# Folders that are local to each node of a cluster by convention, and file systems in one host's memory.
_NODE_LOCAL_FOLDERS = (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"), Path("/run"))
_MEMORY_FILE_SYSTEMS = ("tmpfs", "ramfs")
_following = False


def mark_sweep() -> None:
    """Name this process as the sweep, for follow_sweep in the workers it starts."""
    os.environ[SWEEP_ENV] = f"{socket.gethostname()}:{os.getpid()}"


def follow_sweep(poll_s: float = 0.5) -> None:
    """In a worker that a sweep on this host started (a joblib worker, a submitit-local job): exit as
    soon as that sweep process is gone, so that killing a sweep takes its workers down too. The sweep
    process itself and SLURM jobs (their ancestors are SLURM's daemons, not the sweep) are left alone:
    a SLURM array outlives the login shell by design, and a rerun of the sweep waits for it."""
    global _following
    host, _, pid = os.environ.get(SWEEP_ENV, "").rpartition(":")
    if _following or host != socket.gethostname() or not pid.isdigit() or int(pid) not in _ancestors():
        return
    _following = True
    threading.Thread(target=_exit_without, args=(int(pid), poll_s), daemon=True, name="follow sweep").start()


def _exit_without(sweep: int, poll_s: float) -> None:
    stopped = threading.Event()
    while sweep in _ancestors():
        stopped.wait(poll_s)
    say(f"refinery: the sweep process {sweep} is gone; its worker {os.getpid()} stops too "
        "(rerun the sweep to finish its cells)")
    os._exit(1)  # mid-write is safe: every store write is atomic, and the lease of a dead pid is taken over


def _ancestors() -> list[int]:
    """PIDs of this process's parent, grandparent, ... up to init."""
    chain, pid = [], os.getppid()
    while pid > 1 and pid not in chain:
        chain.append(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return chain


# -- SLURM preflight -------------------------------------------------------------------------------


def check_launcher(launcher: DictConfig, store: Path, jobs: str | None = None) -> None:
    """Refuse a joblib or SLURM sweep that cannot work before anything is written or submitted."""
    target = str(launcher.get("_target_", ""))
    if target.endswith(".JoblibLauncher"):
        _check_joblib(launcher)
    if not target.endswith(".SlurmLauncher"):
        return
    for program in ("sbatch", "sinfo", "scontrol"):
        if shutil.which(program) is None:
            raise UsageError(f"hydra/launcher=slurm needs SLURM's {program} on PATH and it is not there; run the "
                             "sweep on a login node of the cluster, or try it here with hydra/launcher=submitit_local")
    partition = _partition(launcher.get("partition"))
    others = [n for n in _partition_nodes(partition) if n != socket.gethostname().split(".")[0]]
    for key, folder, example in (("paths.store", store, "/shared/$USER/runs"),
                                 ("paths.jobs", job_folder(jobs, store), "~/.cache/refinery/submitit")):
        local = _node_local(folder)
        if others and local:
            raise UsageError(f"{key}={folder} is on {local}, which the other nodes of partition {partition} "
                             f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}) cannot see; put it "
                             f"on a file system that every node mounts (e.g. {key}={example})")


# -- submitit's job pickles -----------------------------------------------------------------------


def job_folder(jobs: str | None, store: Path) -> Path:
    """The folder of a store's submitit jobs: paths.jobs (default ~/.cache/refinery/submitit), then a
    digest of the store's real path, so that two stores' sweeps never share one."""
    root = Path(jobs).expanduser() if jobs else _cache_home() / "refinery" / "submitit"
    return root / hashlib.sha256(os.path.realpath(store).encode()).hexdigest()[:16]


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def private_job_folder(folder: Path) -> Path:
    """Create `folder` with mode 0700 (its missing parents too), or refuse one that others could plant
    a pickle in: owned by another user, or open to group or others (module docstring)."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        for path in reversed(missing):
            path.mkdir(mode=0o700)
    except OSError as exc:
        raise UsageError(f"paths.jobs: cannot create {folder} ({exc.strerror}); set paths.jobs to a folder of "
                         "yours") from None
    info = folder.stat()
    if info.st_uid != os.geteuid() or info.st_mode & 0o077:
        who = "is owned by another user" if info.st_uid != os.geteuid() else \
            f"is open to group or others (mode {stat.S_IMODE(info.st_mode):04o})"
        raise UsageError(f"{folder}, the folder of submitit's job pickles (which jobs load and run), {who}; "
                         f"`chmod 700 {folder}` if it is yours, or set paths.jobs to a private folder")
    return folder


def submitit_sweep_folder(launcher: DictConfig, jobs: str | None, store: Path, overrides: list[str]) -> Path | None:
    """For a submitit launcher, this sweep's folder of job scripts, pickles and logs: one subfolder per
    sweep of the store's private job folder; None for other launchers."""
    if "submitit_folder" not in launcher:
        return None
    if any(o.lstrip("+~").partition("=")[0] == "hydra.launcher.submitit_folder" for o in overrides):
        raise UsageError("hydra.launcher.submitit_folder is set by Refinery (a private folder per store, since its "
                         "pickles are code); set paths.jobs=DIR to choose where it goes")
    return private_job_folder(job_folder(jobs, store)) / f"{datetime.datetime.now():%Y-%m-%d_%H-%M-%S}"


def submitit_override(folder: Path) -> str:
    """The Hydra override that makes submitit write its job folders (`%j`: the job id) under folder."""
    # Hydra's quoted strings: a quote is escaped with a backslash, and backslashes only before a quote
    quoted = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", f"{folder}/%j")
    return f"hydra.launcher.submitit_folder='{quoted}'"


def _check_joblib(launcher: DictConfig) -> None:
    """joblib's n_jobs: a number of workers, or -1 for every core (-2 all but one...); 0 means nothing."""
    n_jobs = launcher.get("n_jobs")
    if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0):
        raise UsageError(f"hydra.launcher.n_jobs={n_jobs!r} is not a number of workers; give a whole number "
                         "other than 0, e.g. hydra.launcher.n_jobs=2 (-1: one per core)")


def _slurm(*args: str) -> str:
    result = subprocess.run(list(args), capture_output=True, text=True)
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip().splitlines() or [f"exit code {result.returncode}"]
        raise UsageError(f"`{' '.join(args)}` failed ({reason[0]}); check that the SLURM controller is up "
                         "and that SLURM_CONF names this cluster")
    return result.stdout


def _partition(name: str | None) -> str:
    """The partition jobs go to: the named one, which must exist, or the cluster's default."""
    listed = _slurm("sinfo", "-h", "-o", "%P").split()
    known = sorted({p.rstrip("*") for p in listed})
    if name is None:
        defaults = [p.rstrip("*") for p in listed if p.endswith("*")]
        if not defaults:
            raise UsageError(f"the cluster has no default partition; set hydra.launcher.partition to one of "
                             f"{', '.join(known)}")
        return defaults[0]
    if str(name) not in known:
        raise UsageError(f"unknown SLURM partition {name!r}; set hydra.launcher.partition to one of "
                         f"{', '.join(known)} (sinfo lists them)")
    return str(name)


def _partition_nodes(partition: str) -> list[str]:
    hostlist = ",".join(_slurm("sinfo", "-h", "-p", partition, "-o", "%N").split())
    return _slurm("scontrol", "show", "hostnames", hostlist).split() if hostlist else []


def _node_local(store: Path) -> str | None:
    """Why the store is visibly local to this host (a memory file system, a node-local folder), or None
    when nothing says so."""
    path = Path(os.path.realpath(store))
    kind = _file_system(path)
    if kind in _MEMORY_FILE_SYSTEMS:
        return f"{kind} (this host's memory)"
    folder = next((f for f in _NODE_LOCAL_FOLDERS if path == f or f in path.parents), None)
    return f"{folder} (local to each node)" if folder else None


def _file_system(path: Path) -> str | None:
    """The type of the file system that holds path, from the longest matching mount point."""
    best, kind = "", None
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        mount = fields[1].replace("\\040", " ")
        if (str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            best, kind = mount, fields[2]
    return kind
