"""Cost of every method beyond its model calls:

    ratio = method wall time / (base wall time * method NFE / base NFE)

1.00 means the method costs exactly its denoiser evaluations; the rest is hook logic, candidate
bookkeeping, verifier calls and decodes. Target: <= 1.10. Runs alternate with base and use medians.
A second ratio takes the decoder's and the verifier's time (timed by the ledger inside those calls)
out of both wall times: what the harness itself adds around the networks a method calls.

    .venv/bin/python benchmarks/bench_methods.py [--repeats 5] [--batch 16]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.engine.ledger import Ledger
from harness.models.toy import load_toy  # noqa: E402
from harness.engine.registry import METHODS
from harness.engine.samplers import Sampler
from harness.engine.rollout import rollout
from harness.world.prompts import eval_prompts  # noqa: E402

METHODS_TO_TIME = {"base": {}, "bon": {"n": 5}, "sop": {"n": 5}, "pnp": {}, "cfg": {}, "cfg_zero": {},
                   "lora": {"checkpoint": "reward"}, "init_noise_refiner": {"checkpoint": "reward"},
                   "autorefiner": {"checkpoint": "reward"}}


def timed(model, method, prompts, seeds, sampler) -> tuple[float, float, Ledger]:
    """Wall seconds, wall seconds outside decoder and verifier calls, and the ledger."""
    start = time.perf_counter()
    result = rollout(model, method, prompts, seeds, sampler)
    wall = time.perf_counter() - start
    return wall, wall - result.ledger.decode_seconds - result.ledger.verifier_seconds, result.ledger


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    model = load_toy()
    sampler = Sampler()
    prompts = [p.text for p in eval_prompts()][: args.batch]
    seeds = list(range(len(prompts)))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {len(prompts)}")
    print("| method | NFE / video | wall s (median) | base wall s (median) | ratio | ratio without decoder + verifier time "
          "| FPS relative to base | decoder s | verifier s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, params in METHODS_TO_TIME.items():
        method = METHODS.get(name)(**params)
        method.prepare(model.spec, Sampler(), Path("weights"))
        base = METHODS.get("base")()
        runs, base_runs = [], []
        for _ in range(args.repeats):
            runs.append(timed(model, method, prompts, seeds, sampler))
            base_runs.append(timed(model, base, prompts, seeds, sampler))
        w, b = (statistics.median(r[0] for r in rs) for rs in (runs, base_runs))
        w_net, b_net = (statistics.median(r[1] for r in rs) for rs in (runs, base_runs))
        nfe_ratio = runs[0][2].nfe / base_runs[0][2].nfe
        decode, verify = (statistics.median(getattr(r[2], key) for r in runs)
                          for key in ("decode_seconds", "verifier_seconds"))
        print(f"| {name} | {runs[0][2].nfe / len(prompts):.0f} | {w:.3f} | {b:.3f} | {w / (b * nfe_ratio):.3f} "
              f"| {w_net / (b_net * nfe_ratio):.3f} | {b / w:.3f} | {decode:.3f} | {verify:.3f} |")


if __name__ == "__main__":
    main()
