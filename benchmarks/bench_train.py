"""Training throughput and memory of `refinery train`, per method and objective:

    iterations/s   optimiser steps per second (one step = one training rollout of `train.batch` videos,
                   the objective, the backward pass, the AdamW step, DMD's fake-score update)
    step peak MB   the memory a training step adds: on CUDA torch.cuda.max_memory_allocated over the
                   steps; on CPU the growth of the process's peak resident set over the steps above
                   its resident set before them (each case runs in a fresh subprocess)
    steps in 30 min on 2 cores   1800 s x iterations/s x the speed-up of 2 threads over the
                   measured thread count (--speedup, 1.0 unless measured; keep it conservative)

The settings are `refinery train`'s (sweeps/train/<objective>.yaml with the command line's overrides),
so the figures are those of the documented training commands.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_train.py [--threads 1] [--steps 5] [--warmup 1]
        [--cases lora:reward,init_noise_refiner:reward,autorefiner:reward,lora:dmd,...] [key=value ...]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASES = [f"{m}:{o}" for o in ("reward", "dmd") for m in ("lora", "init_noise_refiner", "autorefiner")]


def rss_mb() -> float:
    """The current resident set (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def measure(case: str, steps: int, warmup: int, threads: int, overrides: list[str]) -> dict:
    """One case in this process: resolve as `refinery train` does, warm up, time `steps` steps."""
    import torch

    from harness.experiment.plans import compose
    from harness.train.trainer import resolve_training, train_step

    torch.set_num_threads(threads)
    method, objective = case.split(":")
    with tempfile.TemporaryDirectory() as tmp:
        out = f"train.out={tmp}/bench.safetensors"
        cfg = compose([f"+train={objective}", f"method={method}", out, *overrides])
        t = resolve_training(cfg)
        optimizer = torch.optim.AdamW(t.parameters, lr=t.settings.lr)
        for step in range(warmup):
            train_step(t, optimizer, step)
        before = rss_mb()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for step in range(warmup, warmup + steps):
            train_step(t, optimizer, step)
        seconds = time.perf_counter() - start
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        step_peak = (torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available()
                     else max(0.0, peak_rss - before))
    return {"case": case, "it_per_s": steps / seconds, "step_peak_mb": step_peak, "peak_rss_mb": peak_rss,
            "batch": t.settings.batch, "chunks": t.model.spec.num_chunks, "steps": t.sampler.steps,
            "trainable": sum(p.numel() for p in t.parameters)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--speedup", type=float, default=1.0, help="2-thread over measured-thread speed-up")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a subprocess's single case
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.cases, args.steps, args.warmup, args.threads, args.overrides)))
        return
    print(f"{args.threads} thread(s), {args.steps} timed steps after {args.warmup} warm-up, overrides: "
          f"{' '.join(args.overrides) or 'none'}")
    print("| method | objective | batch | chunks x steps | trainable params | it/s | step peak MB | "
          "process peak MB | steps in 30 min on 2 cores |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        cmd = [sys.executable, __file__, "--one", "--cases", case, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--threads", str(args.threads), *args.overrides]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout)
        method, objective = case.split(":")
        print(f"| {method} | {objective} | {r['batch']} | {r['chunks']} x {r['steps']} | {r['trainable']:,} | "
              f"{r['it_per_s']:.2f} | {r['step_peak_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
              f"{int(1800 * r['it_per_s'] * args.speedup)} |", flush=True)


if __name__ == "__main__":
    main()
