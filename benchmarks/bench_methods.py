"""Cost of every method beyond its model calls:

    ratio = method wall time / (base wall time * method NFE / base NFE)

1.00 means the method costs exactly its denoiser evaluations; the rest is hook logic, candidate
bookkeeping, verifier calls and decodes. Target: <= 1.10. Runs alternate with base and use medians.
A second ratio takes the decoder's and the verifier's time (timed by the ledger inside those calls)
out of both wall times: what the harness itself adds around the networks a method calls.

The trained methods (lora, init_noise_refiner, autorefiner) are timed with their adapters merged
(`merge: true`, their default) and as deltas (`merge: false`), each on its own row; a repeat runs
every variant of a method, then base. `--checkpoint null` times them untrained (the same operations:
for models without shipped adapters, such as wan_tiny). `--latents-only` skips decoding (wan_tiny's
VAE takes most of a rollout's time on the CPU, which would hide the denoiser's).

    .venv/bin/python benchmarks/bench_methods.py [--repeats 5] [--batch 16] [--model toy|wan_tiny]
        [--methods lora autorefiner ...] [--checkpoint reward|null] [--latents-only]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_rollout import load  # noqa: E402
from harness.engine.ledger import Ledger
from harness.engine.registry import METHODS
from harness.engine.samplers import Sampler
from harness.engine.rollout import rollout
from harness.world.prompts import eval_prompts  # noqa: E402

METHODS_TO_TIME = {"base": {}, "bon": {"n": 5}, "sop": {"n": 5}, "pnp": {}, "cfg": {}, "cfg_zero": {},
                   "lora": {"checkpoint": "reward"}, "init_noise_refiner": {"checkpoint": "reward"},
                   "autorefiner": {"checkpoint": "reward"}}
TRAINED = ("lora", "init_noise_refiner", "autorefiner")


def variants(name: str, params: dict, checkpoint: str | None) -> dict[str, dict]:
    """The settings a method is timed with, by row label: a trained method merged and as deltas."""
    if name not in TRAINED:
        return {name: params}
    return {f"{name} ({checkpoint or 'untrained'}, merge {merge})": {**params, "checkpoint": checkpoint, "merge": merge}
            for merge in (True, False)}


def timed(model, method, prompts, seeds, sampler, decode: bool = True) -> tuple[float, float, Ledger]:
    """Wall seconds, wall seconds outside decoder and verifier calls, and the ledger."""
    start = time.perf_counter()
    result = rollout(model, method, prompts, seeds, sampler, decode=decode)
    wall = time.perf_counter() - start
    return wall, wall - result.ledger.decode_seconds - result.ledger.verifier_seconds, result.ledger


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--model", default="toy")
    parser.add_argument("--methods", nargs="+", default=list(METHODS_TO_TIME), choices=list(METHODS_TO_TIME))
    parser.add_argument("--checkpoint", default="reward", help="the trained methods' adapters; null: untrained")
    parser.add_argument("--latents-only", action="store_true", help="roll out without decoding the videos")
    args = parser.parse_args()
    model, _ = load(args.model)
    checkpoint = None if args.checkpoint == "null" else args.checkpoint
    sampler = Sampler()
    prompts = [p.text for p in eval_prompts()][: args.batch]
    seeds = list(range(len(prompts)))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {args.model}, batch {len(prompts)}")
    print("| method | NFE / video | wall s (median) | base wall s (median) | ratio | ratio without decoder + verifier time "
          "| FPS relative to base | decoder s | verifier s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.methods:
        methods = {label: METHODS.get(name)(**params)
                   for label, params in variants(name, METHODS_TO_TIME[name], checkpoint).items()}
        for method in methods.values():
            method.prepare(model.spec, sampler, Path("weights"))
        base = METHODS.get("base")()
        runs: dict[str, list] = {label: [] for label in methods}
        base_runs = []
        for _ in range(args.repeats):
            for label, method in methods.items():
                runs[label].append(timed(model, method, prompts, seeds, sampler, not args.latents_only))
            base_runs.append(timed(model, base, prompts, seeds, sampler, not args.latents_only))
        for label, own in runs.items():
            print(row(label, own, base_runs, len(prompts)))


def row(label: str, runs: list, base_runs: list, videos: int) -> str:
    """One method's table row from its runs and the base runs that alternated with them."""
    w, b = (statistics.median(r[0] for r in rs) for rs in (runs, base_runs))
    w_net, b_net = (statistics.median(r[1] for r in rs) for rs in (runs, base_runs))
    nfe_ratio = runs[0][2].nfe / base_runs[0][2].nfe
    decode, verify = (statistics.median(getattr(r[2], key) for r in runs) for key in ("decode_seconds", "verifier_seconds"))
    return (f"| {label} | {runs[0][2].nfe / videos:.0f} | {w:.3f} | {b:.3f} | {w / (b * nfe_ratio):.3f} "
            f"| {w_net / (b_net * nfe_ratio):.3f} | {b / w:.3f} | {decode:.3f} | {verify:.3f} |")


if __name__ == "__main__":
    main()
