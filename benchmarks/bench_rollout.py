"""(a) The instrumented rollout against a bare loop calling the same model on the same inputs,
(b) base frames per second of the model, and (c) the harness's own time: the instrumented rollout
of a model with the same interface whose calls cost nothing.

    .venv/bin/python benchmarks/bench_rollout.py [--repeats 7] [--model toy|wan_tiny] [--batches 1 48]

For wan_tiny the bare loop calls the same diffusers modules (the Wan transformer through the causal
processor, the Wan VAE) directly, without the harness's context, hooks, keyed noise or ledger.

The bare loop is the minimal Self-Forcing loop with the noise drawn beforehand; the instrumented
rollout draws its keyed noise itself, runs the method hooks and the ledger. Both must produce the
same videos bit for bit (checked), so the ratio is pure harness overhead. Runs alternate and the
ratio uses medians, because the machine is shared. (c) does not depend on that noise: what is left of
a rollout when the model costs nothing (its text encoding done beforehand) is the harness's time.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.experiment.plans import compose
from harness.engine.noise import NoiseSource
from harness.experiment.pipeline import load_model, sampler_from
from harness.engine.samplers import renoise
from harness.engine.rollout import rollout
from harness.world.prompts import eval_prompts  # noqa: E402
from methods.base import Base  # noqa: E402


def bare_rollout(model, prompts, initial, path, sigmas):
    """Self-Forcing's loop, nothing else: initial[c] and path[c][s] are drawn beforehand."""
    with torch.inference_mode():
        cond = model.encode(prompts)
        cache = model.new_cache(len(prompts))
        chunks = []
        for c in range(model.spec.num_chunks):
            x = initial[c]
            for s, sigma in enumerate(sigmas):
                x0 = model.denoise(x, sigma, cond, cache)
                if s == len(sigmas) - 1:
                    break
                x = renoise(x0, path[c][s], sigmas[s + 1])
            chunks.append(x0)
            if c < model.spec.num_chunks - 1:
                model.commit(x0, cond, cache)
        return model.decode(torch.cat(chunks, 1))


class ZeroCostModel:
    """A model's interface whose calls cost nothing: denoising, cache passes and decoding do no work,
    and the text encoding is done once beforehand (it is the model's cost, not the harness's)."""

    def __init__(self, model):
        self.model, self.spec, self.device = model, model.spec, model.device
        self.encoded = {}

    def encode(self, prompts):
        key = tuple(prompts)
        if key not in self.encoded:
            self.encoded[key] = self.model.encode(prompts)
        return self.encoded[key]

    def new_cache(self, batch, start=0):
        return self.model.new_cache(batch, start)

    def denoise(self, x, sigma, cond, cache):
        return x

    def commit(self, x0, cond, cache):
        pass

    def decode(self, latents):
        return latents.new_zeros(*latents.shape[:2], 3, 1, 1)


def load(name: str):
    cfg = compose([f"model={name}"])
    return load_model(cfg), sampler_from(cfg)


def prompts_for(batch: int) -> list[str]:
    prompts = [p.text for p in eval_prompts()]
    return (prompts * (batch // len(prompts) + 1))[:batch]


def harness_seconds(name: str, batch: int, repeats: int) -> float:
    """Median wall time of a base rollout of ZeroCostModel."""
    model, sampler = load(name)
    prompts = prompts_for(batch)
    zero = ZeroCostModel(model)
    times = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        rollout(zero, Base(), prompts, list(range(batch)), sampler)
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])  # the first calls pay one-off allocations


def measure(name: str, batch: int, repeats: int) -> dict:
    model, sampler = load(name)
    prompts = prompts_for(batch)
    seeds = list(range(batch))
    noise = NoiseSource(seeds, (model.spec.frames_per_chunk, *model.spec.latent_shape))
    initial = [noise.initial(c) for c in range(model.spec.num_chunks)]
    path = [[noise.path(c, s) for s in range(sampler.steps - 1)] for c in range(model.spec.num_chunks)]
    bare_times, instr_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        bare = bare_rollout(model, prompts, initial, path, sampler.sigmas)
        bare_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        result = rollout(model, Base(), prompts, seeds, sampler)
        instr_times.append(time.perf_counter() - start)
        assert torch.equal(bare, result.videos), "instrumented and bare rollouts differ"
    frames = result.videos.shape[0] * result.videos.shape[1]
    bare_med, instr_med = statistics.median(bare_times), statistics.median(instr_times)
    return {"batch": batch, "bare_s": bare_med, "instrumented_s": instr_med, "ratio": instr_med / bare_med,
            "fps": frames / instr_med, "nfe_per_video": result.ledger.nfe / batch}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--model", default="toy")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 48])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {args.model}")
    for batch in args.batches:
        r = measure(args.model, batch, args.repeats)
        own = harness_seconds(args.model, batch, args.repeats)
        print(f"batch {r['batch']:3d}: bare {r['bare_s']:.3f} s, instrumented {r['instrumented_s']:.3f} s, "
              f"ratio {r['ratio']:.3f}; {r['fps']:.0f} frames/s; {r['nfe_per_video']:.0f} NFE/video; "
              f"harness alone {own * 1e3:.1f} ms = {own / r['instrumented_s']:.1%} of the rollout")


if __name__ == "__main__":
    main()
