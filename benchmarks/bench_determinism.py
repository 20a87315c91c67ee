"""What changes the bits of a video: the CPU thread count and the batch size (both in a cell's key).

    .venv/bin/python benchmarks/bench_determinism.py [--threads 1 2 3] [--batches 1 2 4 8 24]

The first 24 prompts of the world's evaluation suite (seed 0, the full-length toy, 4 stochastic
steps) are generated in one fresh process per (threads, batch size), each started with
OMP_NUM_THREADS=1 as a joblib worker is and computing with the threads the pipeline sets
(harness.experiment.pipeline.cpu_threads). Each result is compared with the first thread count at the same
batch size, and each batch size with the first one at the first thread count: videos that differ,
the largest difference in 8-bit levels, and before rounding.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
VIDEOS = 24
GENERATE = f"""
import sys, torch
from harness.models.toy import load_toy
from harness.experiment.pipeline import cpu_threads
from harness.engine.samplers import Sampler
from harness.engine.rollout import rollout
from harness.world.prompts import eval_prompts
from methods.base import Base
threads, batch, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
prompts = [row.text for row in eval_prompts()][:{VIDEOS}]
model, parts = load_toy(), []
with cpu_threads(threads):
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        parts.append(rollout(model, Base(), chunk, [0] * len(chunk), Sampler(steps=4)).videos)
torch.save(torch.cat(parts), out)
"""


def generate(threads: int, batch: int, folder: Path) -> torch.Tensor:
    out = folder / f"t{threads}-b{batch}.pt"
    subprocess.run([sys.executable, "-c", GENERATE, str(threads), str(batch), str(out)], cwd=ROOT, check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return torch.load(out, weights_only=True)


def compare(a: torch.Tensor, b: torch.Tensor) -> str:
    levels = ((a.clamp(0, 1) * 255).round() - (b.clamp(0, 1) * 255).round()).abs().flatten(1).amax(1)
    return (f"{int((levels > 0).sum())} of {len(a)} videos differ, by up to {int(levels.max())} levels "
            f"({float((a - b).abs().max()):.1e} before rounding)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 24])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {VIDEOS} videos, OMP_NUM_THREADS=1 in every process")
    with tempfile.TemporaryDirectory() as tmp:
        videos = {(t, b): generate(t, b, Path(tmp)) for b in args.batches for t in args.threads}
    first_t, first_b = args.threads[0], args.batches[0]
    for b in args.batches:
        for t in args.threads[1:]:
            print(f"batch {b}: {t} threads against {first_t}: {compare(videos[t, b], videos[first_t, b])}")
    for b in args.batches[1:]:
        print(f"{first_t} threads: batch {b} against batch {first_b}: "
              f"{compare(videos[first_t, b], videos[first_t, first_b])}")


if __name__ == "__main__":
    main()
