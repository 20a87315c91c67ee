"""Costs of training at paper scale on a CPU (docs/training.md#training-at-paper-scale), each case a fresh
`refinery train` process, the compared cases alternated round by round so that other work on the
machine loads both alike:

    checkpointing   wan_tiny, with and without train.checkpointing: seconds per step (the log's mean,
                    first step left out) and the process's peak resident set (ru_maxrss)
    activations     the same step in this process, with and without checkpointing: megabytes of the
                    distinct tensors autograd saves for the backward pass (torch's saved-tensor hooks; a
                    checkpointed block saves its input only)
    ranks           2 gloo ranks (train.devices=2) against 1 process accumulating the same micro-batches
                    (train.micro_batch=1): wall seconds and CPU seconds (user + system, every process)

    .venv/bin/python benchmarks/bench_train_scale.py [--rounds 2] [--what checkpointing,ranks] [key=value ...]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WAN = ["model=wan_tiny", "method=autorefiner", "train=reward", "model.num_chunks=3", "train.batch=2",
       "train.steps=4", "train.threads=1"]
CASES = {
    "checkpointing": {"off": [*WAN, "train.checkpointing=false"], "on": [*WAN, "train.checkpointing=true"]},
    "ranks": {"1 process": ["method=lora", "train=reward", "train.batch=2", "train.steps=4", "train.micro_batch=1",
                            "train.threads=1"],
              "2 gloo ranks": ["method=lora", "train=reward", "train.batch=2", "train.steps=4", "train.devices=2",
                               "train.threads=1"]},
}


# a parent of its own per run: RUSAGE_CHILDREN's peak RSS is the largest over every child ever waited for
MEASURED = ("import json, resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
            "r = resource.getrusage(resource.RUSAGE_CHILDREN); print(json.dumps([r.ru_utime + r.ru_stime, r.ru_maxrss]))")


def run(overrides: list[str]) -> dict:
    """One `refinery train` in a fresh process tree: wall and CPU seconds (every process), the peak RSS of
    its largest process, seconds per step from the training log (steps after the first)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.safetensors"
        began = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", MEASURED, sys.executable, "-m", "harness.cli", "train",
                               *overrides, f"train.out={out}"], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                              check=True, capture_output=True, text=True)
        wall = time.perf_counter() - began
        cpu, peak_kb = json.loads(done.stdout.strip().splitlines()[-1])
        steps = [json.loads(line)["seconds"] for line in out.with_name("bench.log.jsonl").read_text().splitlines()]
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak_kb / 1024,
            "s_per_step": sum(steps[1:]) / max(len(steps) - 1, 1)}


def saved_activation_mb(overrides: list[str]) -> float:
    """Megabytes of the distinct tensors that one training step's forward passes save for backward."""
    import torch

    from harness.experiment.plans import compose
    from harness.train.trainer import resolve_training, train_step

    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with tempfile.TemporaryDirectory() as tmp:
        groups = [o for o in overrides if o.startswith("train=")]
        rest = [o for o in overrides if not o.startswith("train=")]
        t = resolve_training(compose([f"+{groups[-1]}", *rest, f"train.out={tmp}/a.safetensors"]))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            train_step(t, torch.optim.SGD(t.parameters, lr=0.0), 0)
    return sum(seen.values()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--what", default="checkpointing,ranks")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    for what in args.what.split(","):
        if what == "activations":
            for name, overrides in CASES["checkpointing"].items():
                print(f"activations saved for backward, checkpointing {name}: "
                      f"{saved_activation_mb([*overrides, *args.overrides]):.1f} MB")
            continue
        results: dict[str, list[dict]] = {name: [] for name in CASES[what]}
        for _ in range(args.rounds):
            for name, overrides in CASES[what].items():
                results[name].append(run([*overrides, *args.overrides]))
        for name, rows in results.items():
            print(json.dumps({"what": what, "case": name, "runs": rows}))
        names = list(results)
        for key in ("wall_s", "cpu_s", "peak_rss_mb", "s_per_step"):
            ratios = [b[key] / a[key] for a, b in zip(results[names[0]], results[names[1]])]
            print(f"{what}: {names[1]} / {names[0]} {key}: " + ", ".join(f"{r:.3f}" for r in ratios))


if __name__ == "__main__":
    main()
