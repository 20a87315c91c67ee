"""`run.workers=N`: N local processes generate one cell together, one per visible GPU (each with
CUDA_VISIBLE_DEVICES naming its GPU, so that every worker's model is on cuda:0 and the cell's key is
the one a single writer gets), or N CPU processes of the cell's `threads` threads where the model
runs on the CPU. They share the cell's rollout batches as any writers of one cell do
(pipeline.generate); the process that started them scores the cell once they are done.

A worker is this module run as a program: `python -m harness.experiment.workers <overrides>`.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import harness
from harness.errors import UsageError
from harness.experiment.launchers import SWEEP_ENV, follow_sweep
from harness.store.lease import say

REPORT_ENV = "REFINERY_WORKER_REPORT"  # where a worker writes what it generated (JSON)
RESUME_ENV = "REFINERY_RESUME"  # the command that finishes the cell: the run that started the worker's


def run_workers(overrides: list[str], gpus: list[str | None], resume: str) -> tuple[int, int]:
    """Start one worker per entry of `gpus` on the cell of `overrides` and wait for all of them;
    (videos, model calls) they generated together. A worker that fails or is killed leaves its
    batches to the others (and to the caller's own generate, which finishes whatever is left)."""
    package_root = str(Path(harness.__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory(prefix="refinery-workers-") as reports:
        started = []
        for n, gpu in enumerate(gpus):
            env = {**os.environ, SWEEP_ENV: f"{socket.gethostname()}:{os.getpid()}",  # it stops with this process
                   REPORT_ENV: f"{reports}/{n}.json", RESUME_ENV: resume,
                   "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpu
            mine = [o for o in overrides if o.partition("=")[0].lstrip("+~") != "run.workers"]
            command = [sys.executable, "-m", "harness.experiment.workers", *mine, "run.workers=1"]
            started.append(subprocess.Popen(command, env=env))
        try:
            codes = [p.wait() for p in started]
        finally:
            for p in started:  # Ctrl-C or an error here: no worker outlives the run
                if p.poll() is None:
                    p.terminate()
                    p.wait()
        for n, code in enumerate(codes):
            if code != 0:
                say(f"refinery: worker {n} (pid {started[n].pid}) exited with status {code}; "
                    "the others and this process finish its batches")
        made = [json.loads(p.read_text()) for p in sorted(Path(reports).glob("*.json"))]
    return sum(m["videos"] for m in made), sum(m["model_calls"] for m in made)


def main(overrides: list[str]) -> int:
    """One worker: generate its share of the cell, write what it made to REPORT_ENV's file."""
    from harness.experiment.pipeline import generate, resolve_run, open_store
    from harness.experiment.plans import compose, load_plugins

    if str(os.getppid()) != os.environ.get(SWEEP_ENV, "").rpartition(":")[2]:
        return 1  # the run that started this worker died before it got here; follow_sweep would miss it
    follow_sweep()
    try:
        cfg = compose(overrides)
        load_plugins(cfg)
        made = generate(resolve_run(cfg), open_store(cfg), resume=os.environ.get(RESUME_ENV))
    except UsageError as exc:
        print(f"refinery: error: {exc}", file=sys.stderr)
        return 2
    if os.environ.get(REPORT_ENV):
        Path(os.environ[REPORT_ENV]).write_text(json.dumps({"videos": made.videos, "model_calls": made.model_calls}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
