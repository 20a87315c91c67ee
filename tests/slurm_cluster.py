"""A real one-node SLURM cluster for the tests: munged, slurmctld and slurmd from Debian's `munge` and
`slurm-wlm` packages, started as ordinary child processes in a private folder and stopped by PID.

    with SlurmCluster.start(tmp_path) as cluster:
        subprocess.run(["sbatch", "--wait", ...], env=cluster.env)

Besides the default partition `debug` (this host), the cluster has a partition `multi` whose second
node `ghost` never answers: enough for a sweep to see a partition that spans other hosts.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "sinfo", "scontrol", "mungekey")
START_TIMEOUT_S = 60.0
DRAIN_S = 30.0  # the most a stop waits for jobs still ending


def missing_programs() -> list[str]:
    """The SLURM and munge programs this machine lacks (empty when the cluster can start)."""
    return [p for p in (*DAEMONS, *CLIENTS) if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]


def _program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def _slurm_conf(folder: Path, node: str) -> str:
    ctld_port, slurmd_port = _free_ports(2)
    return "\n".join([
        "ClusterName=refinery-test",
        f"SlurmctldHost={node}",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}",
        "AuthType=auth/munge",
        f"AuthInfo=socket={folder / 'munge.socket'}",
        "CredType=cred/munge",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "DefMemPerCPU=1024",
        "MailProg=/bin/true",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"StateSaveLocation={folder / 'state'}",
        f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
        f"SlurmdPidFile={folder / 'slurmd.pid'}",
        f"SlurmctldLogFile={folder / 'slurmctld.log'}",
        f"SlurmdLogFile={folder / 'slurmd.log'}",
        "ReturnToService=2",
        # scancel sends SIGTERM, which submitit's job wrapper ignores; SIGKILL follows after KillWait
        "KillWait=1",
        "MinJobAge=300",
        f"NodeName={node} CPUs={os.cpu_count()} RealMemory={_memory_mb() - 1024} State=UNKNOWN",
        "NodeName=ghost NodeAddr=127.0.0.254 CPUs=1 State=UNKNOWN",
        f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP",
        f"PartitionName=multi Nodes={node},ghost MaxTime=INFINITE State=UP",
        "",
    ])


@dataclass
class SlurmCluster:
    folder: Path
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    started_s: float = 0.0  # seconds from the first daemon's start to an idle node

    @classmethod
    def start(cls, folder: Path) -> SlurmCluster:
        """Start the three daemons; on any failure the ones already started are stopped."""
        folder.mkdir(parents=True, exist_ok=True)
        for sub in ("state", "spool"):
            (folder / sub).mkdir(exist_ok=True)
        node = socket.gethostname().split(".")[0]
        (folder / "slurm.conf").write_text(_slurm_conf(folder, node))
        env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}
        cluster = cls(folder, env)
        began = time.monotonic()
        try:
            cluster._start_munge()
            cluster._spawn("slurmctld", "-D", "-f", str(folder / "slurm.conf"))
            cluster._spawn("slurmd", "-D", "-f", str(folder / "slurm.conf"))
            cluster._wait_idle(node)
        except BaseException:
            cluster.stop()
            raise
        cluster.started_s = time.monotonic() - began
        return cluster

    def _start_munge(self) -> None:
        key = self.folder / "munge.key"
        subprocess.run([_program("mungekey"), "--create", f"--keyfile={key}", "--force"], check=True,
                       capture_output=True)
        key.chmod(0o600)
        self._spawn("munged", "--foreground", "--force", f"--key-file={key}",
                    f"--socket={self.folder / 'munge.socket'}", f"--pid-file={self.folder / 'munged.pid'}",
                    f"--log-file={self.folder / 'munged.log'}", f"--seed-file={self.folder / 'munged.seed'}")
        self._until(lambda: (self.folder / "munge.socket").exists(), "munged to open its socket")

    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.folder / f"{name}.out", "wb")
        self.processes[name] = subprocess.Popen([_program(name), *args], env=self.env, stdout=log,
                                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()

    def _wait_idle(self, node: str) -> None:
        def idle() -> bool:
            out = subprocess.run(["sinfo", "-h", "-n", node, "-o", "%t"], env=self.env, capture_output=True,
                                 text=True)
            return out.returncode == 0 and out.stdout.strip().rstrip("*") == "idle"
        self._until(idle, f"node {node} to become idle")

    def _until(self, condition, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not condition():
            dead = [n for n, p in self.processes.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"SLURM test cluster: gave up waiting for {what} "
                                   f"(exited: {dead or 'none'}); logs in {self.folder}")
            time.sleep(0.1)

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.processes.items()}

    def stop(self) -> None:
        """Stop every daemon this cluster started, by PID, slurmd first; SIGKILL what ignores SIGTERM.
        Jobs still ending are let finish first: a step whose daemons are gone can never report its
        exit, and its slurmstepd and srun would outlive the tests."""
        if all(p.poll() is None for p in self.processes.values()) and "slurmd" in self.processes:
            deadline = time.monotonic() + DRAIN_S
            while self._jobs_left() and time.monotonic() < deadline:
                time.sleep(0.2)
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    def _jobs_left(self) -> bool:
        out = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True)
        return out.returncode == 0 and bool(out.stdout.strip())

    def __enter__(self) -> SlurmCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
