"""What limits the flow teacher's shapes (issue 26, item 1): first-chunk denoisers trained at small cost.

    .venv/bin/python benchmarks/bench_teacher.py --out /tmp/teacher_study [--variants base patch2 ...]
        [--steps 1000] [--per-prompt 4] [--threads 2]

Every variant trains `refinery train-world`'s stage 1 (first chunks alone: where the prompt is all
the model has, so where shape is decided) from the same seed, data and autoencoder (the shipped
`toy_flow`'s, which round-trips the renders at 1.00), changing one thing: capacity (width, depth),
patch size (the tokens per frame), training length or objective. Each is then sampled as the
teacher is judged: one chunk of the 42 held-out prompts x 2 seeds, 32 Euler ODE steps, CFG 4, read
by the oracle (`world_alignment`). The shipped `toy_flow` read this way is the reference row: its
first chunk reads shape 0.38, its whole videos 0.42 (docs/shapes-world.md), so the proxy keeps the
ceiling. One JSON line per variant is appended to <out>/results.jsonl as it finishes, so a partial
study keeps what it measured; a variant already there is not trained again.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import api  # noqa: E402
from harness.models.toy import FLOW_WEIGHTS, ToyVideoModel, load_toy  # noqa: E402
from harness.models.toy_train import (DenoiserTraining, TrainWorldConfig, architecture, encode_dataset,  # noqa: E402
                                      render_dataset, save_toy, train_denoiser)
from harness.world.prompts import train_prompts  # noqa: E402

# name -> (TrainWorldConfig changes, steps multiplier): one axis at a time
VARIANTS: dict[str, tuple[dict, int]] = {
    "base": ({}, 1),                                     # the shipped recipe's stage 1
    "long": ({}, 3),                                     # training length
    "patch2": ({"patch": 2}, 1),                         # 4x the tokens per frame: 4x4 latent pixels -> 2x2
    "wide": ({"dim": 256, "heads": 8}, 1),               # width
    "deep": ({"depth": 8}, 1),                           # depth
    "lr_high": ({"lr": 1e-3}, 1),                        # optimiser: a higher learning rate
    "no_sampler_levels": ({"sampler_sigma_prob": 0.0}, 1),  # objective: noise levels uniform only
}
JUDGED_AS = ["model=toy_flow", "model.num_chunks=1", "sampler=ode", "sampler.steps=32", "method=cfg",
             "method.params.scale=4", "~metric.dynamics", "~metric.temporal_flicker", "~metric.world_bench"]
READ = ["colour", "shape", "count", "object", "persistence"]


def first_chunks(per_prompt: int, vae_model: ToyVideoModel) -> tuple[torch.Tensor, list[str]]:
    """The training prompts' first chunks (per_prompt renders each), encoded by the shipped autoencoder."""
    cfg = vae_model.cfg
    videos, labels = render_dataset(train_prompts(), per_prompt, cfg.frames_per_chunk, cfg.frame_size)
    return encode_dataset(vae_model, videos), labels


def judge(checkpoint: Path, store: Path) -> dict[str, float]:
    frame = api.run([*JUDGED_AS, f"model.checkpoint={checkpoint}", f"paths.store={store}"])
    means = frame[frame.metric.str.startswith("world_alignment.")].groupby("metric").value.mean()
    return {name: round(float(means[f"world_alignment.{name}"]), 3) for name in READ}


def train_variant(name: str, latents: torch.Tensor, labels: list[str], vae: ToyVideoModel, steps: int,
                  out: Path) -> dict:
    changes, times = VARIANTS[name]
    cfg = TrainWorldConfig(**{**changes, "first_chunk_steps": steps * times, "steps": 0})
    torch.manual_seed(cfg.seed)
    model = ToyVideoModel(architecture(cfg))
    model.vae.load_state_dict(vae.vae.state_dict())
    start = time.perf_counter()
    ema = train_denoiser(DenoiserTraining(model, torch.Generator().manual_seed(cfg.seed), cfg), latents, labels)
    seconds = time.perf_counter() - start
    path = out / f"{name}.safetensors"
    save_toy(ema, path, {**dataclasses.asdict(cfg), "study": name})
    return {"variant": name, "changes": changes, "steps": cfg.first_chunk_steps,
            "denoiser_params_m": round(sum(p.numel() for p in ema.denoiser.parameters()) / 1e6, 2),
            "train_seconds": round(seconds, 1), "s_per_step": round(seconds / max(1, cfg.first_chunk_steps), 3),
            **judge(path, out / "store")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=1000, help="stage-1 steps of a variant of multiplier 1")
    parser.add_argument("--per-prompt", type=int, default=4, help="renders of each training prompt")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    done = {json.loads(line)["variant"] for line in results.read_text().splitlines()} if results.exists() else set()
    if "shipped" not in done:
        row = {"variant": "shipped", "steps": None, **judge(FLOW_WEIGHTS, args.out / "store")}
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(row, flush=True)
    vae = load_toy(FLOW_WEIGHTS)
    latents, labels = first_chunks(args.per_prompt, vae)
    for name in args.variants:
        if name in done:
            continue
        row = {**train_variant(name, latents, labels, vae, args.steps, args.out), "per_prompt": args.per_prompt,
               "threads": args.threads, "date": time.strftime("%Y-%m-%d")}
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(row, flush=True)


if __name__ == "__main__":
    main()
