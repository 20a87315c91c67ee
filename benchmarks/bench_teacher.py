"""What limits the flow teacher's shapes (issue 26, item 1), measured at small cost. Three probes:

    .venv/bin/python benchmarks/bench_teacher.py sigma [--model FILE]
        what the denoiser can represent: one-step x0 from renders noised to each level, read by the oracle
    .venv/bin/python benchmarks/bench_teacher.py samplers [--model FILE]
        what sampling can draw out of it: 32 Euler ODE steps, timestep shift 1 or 3, CFG 1, 2, 4 or 7
    .venv/bin/python benchmarks/bench_teacher.py train --out DIR --variants base patch2 ... [--steps 1000]
        [--init-from FILE] [--per-prompt 4]: first-chunk denoisers, one change each, judged as the teacher is
    .venv/bin/python benchmarks/bench_teacher.py judge FILE... [--whole]
        models (`refinery train-world` checkpoints) judged as the teacher is: first chunks, or whole videos

Every probe reads first chunks (3 frames) of the 42 held-out prompts x 2 seeds: the first chunk is
where the prompt alone decides what the video shows, so where shape is decided; the shipped
`toy_flow` read this way keeps its whole-video ceiling (first chunk 0.38, whole videos 0.42 at 32 ODE
steps and CFG 4, docs/shapes-world.md). `train` trains `refinery train-world`'s stage 1 (first chunks
alone) from one seed and the shipped autoencoder (which round-trips the renders at 1.00), changing one
thing: patch size, width, depth, length, learning rate or noise levels, then judges the EMA with 32 ODE
steps and CFG 4 (`world_alignment`); from scratch, 1,000 steps are too few to learn anything (shape and
colour about 0.05, benchmarks/RESULTS.md), so compare variants at several thousand, or --init-from a model. Every result is one JSON line appended to <out>/results.jsonl
(default runs/teacher_study/), so a partial study keeps what it measured; a trained variant
already there is not trained again.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import api  # noqa: E402
from harness.train.adapter_files import read_metadata  # noqa: E402
from harness.models.toy import FLOW_WEIGHTS, ToyVideoModel, load_toy  # noqa: E402
from harness.models.toy_train import (DenoiserTraining, TrainWorldConfig, architecture, encode_dataset,  # noqa: E402
                                      render_dataset, save_toy, train_denoiser)
from harness.world.grammar import parse  # noqa: E402
from harness.world.oracle import judge, read_video  # noqa: E402
from harness.world.prompts import eval_prompts, train_prompts  # noqa: E402
from harness.world.render import render  # noqa: E402

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
AS_TEACHER = ["model=toy_flow", "sampler=ode", "sampler.steps=32", "~metric.dynamics", "~metric.temporal_flicker",
              "~metric.world_bench"]
FIRST_CHUNK = [*AS_TEACHER, "model.num_chunks=1"]
READ = ["colour", "shape", "count", "object"]
WHOLE = [*READ, "motion", "persistence", "persistent"]  # persistent: the share of videos that never lose an object
SIGMAS = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9]


def judged(model: str | Path, store: Path, *settings: str, whole: bool = False) -> dict[str, float]:
    """world_alignment of the held-out prompts x 2 seeds from `model` with `settings`: their first
    chunks, or (whole) their whole videos."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        frame = api.run([*(AS_TEACHER if whole else FIRST_CHUNK), f"model.checkpoint={model}",
                         f"paths.store={store}", *settings])
    means = frame[frame.metric.str.startswith("world_alignment.")].groupby("metric").value.mean()
    return {**{name: round(float(means[f"world_alignment.{name}"]), 3) for name in (WHOLE if whole else READ)},
            **by_shape(frame)}


def by_shape(frame) -> dict[str, float]:
    """Shape accuracy of the one-object prompts by the shape they ask for (14 prompts x 2 seeds)."""
    shape = frame[frame.metric == "world_alignment.shape"]
    asked = shape.prompt.map(lambda p: parse(p).objects[0].shape if len(parse(p).objects) == 1 else None)
    return {f"shape_{name}": round(float(v), 3) for name, v in shape.value.groupby(asked).mean().items()}


def sigma_probe(model_file: str | Path) -> list[dict]:
    """Oracle readings of one-step x0 predictions from renders noised to each of SIGMAS (0: the
    autoencoder's round trip), with the right prompt, on held-out and on training prompts."""
    model = load_toy(model_file).eval()
    rows = []
    for label, prompts in (("held-out", [p.text for p in eval_prompts()]), ("training", train_prompts()[::19])):
        items = [(p, s) for p in prompts for s in range(2)]
        videos = np.stack([render(parse(p), s) for p, s in items])[:, : model.cfg.frames_per_chunk]
        x0 = model.encode_video(torch.from_numpy(videos).float().permute(0, 1, 4, 2, 3))
        cond = model.encode([p for p, _ in items])
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
        for sigma in SIGMAS:
            xt = (1 - sigma) * x0 + sigma * noise
            x0_hat = model.denoise(xt, sigma, cond, model.new_cache(len(items))) if sigma else x0
            frames = model.decode(x0_hat).permute(0, 1, 3, 4, 2).clamp(0, 1).numpy()
            scores = [judge(parse(p), read_video(f)) for (p, _), f in zip(items, frames)]
            rows.append({"probe": "sigma", "prompts": label, "videos": len(items), "sigma": sigma,
                         **{k: round(float(np.mean([s[k] for s in scores])), 3) for k in READ}})
    return rows


def sampler_probe(model_file: str | Path, store: Path) -> list[dict]:
    rows = []
    for shift in (1.0, 3.0):
        for scale in (1, 2, 4, 7):
            method = ["method=base"] if scale == 1 else ["method=cfg", f"method.params.scale={scale}"]
            rows.append({"probe": "samplers", "shift": shift, "cfg": scale,
                         **judged(model_file, store, *method, f"sampler.shift={shift}")})
    return rows


def train_variant(name: str, latents: torch.Tensor, labels: list[str], start: ToyVideoModel, steps: int,
                  init: bool, out: Path) -> dict:
    changes, times = VARIANTS[name]
    cfg = TrainWorldConfig(**{**changes, "first_chunk_steps": steps * times, "steps": 0})
    torch.manual_seed(cfg.seed)
    model = ToyVideoModel(architecture(cfg))
    if init:
        model.load_state_dict(start.state_dict())
    else:
        model.vae.load_state_dict(start.vae.state_dict())
    began = time.perf_counter()
    ema = train_denoiser(DenoiserTraining(model, torch.Generator().manual_seed(cfg.seed), cfg), latents, labels)
    seconds = time.perf_counter() - began
    path = out / f"{name}.safetensors"
    save_toy(ema, path, {**dataclasses.asdict(cfg), "study": name})
    return {"probe": "train", "variant": name, "changes": changes, "steps": cfg.first_chunk_steps,
            "denoiser_params_m": round(sum(p.numel() for p in ema.denoiser.parameters()) / 1e6, 2),
            "train_seconds": round(seconds, 1), "s_per_step": round(seconds / max(1, cfg.first_chunk_steps), 3),
            **judged(path, out / "store", "method=cfg", "method.params.scale=4")}


def train_study(args: argparse.Namespace, results: Path) -> None:
    done = {json.loads(line).get("variant") for line in results.read_text().splitlines()} if results.exists() else set()
    start = load_toy(args.init_from or FLOW_WEIGHTS)
    frames = start.cfg.frames_per_chunk
    videos, labels = render_dataset(train_prompts(), args.per_prompt, frames, start.cfg.frame_size)
    latents = encode_dataset(start, videos)
    for name in args.variants:
        if name not in done:
            row = train_variant(name, latents, labels, start, args.steps, bool(args.init_from), args.out)
            append(results, {**row, "init_from": args.init_from, "per_prompt": args.per_prompt})


def training_step(model_file: str) -> int | None:
    """The denoiser step a train-world checkpoint was written at (its metadata)."""
    return json.loads(read_metadata(Path(model_file)).get("training", "{}")).get("step")


def append(results: Path, row: dict) -> None:
    row = {**row, "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
    with results.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe", choices=["sigma", "samplers", "train", "judge"])
    parser.add_argument("files", nargs="*", help="judge: the model files")
    parser.add_argument("--whole", action="store_true", help="judge: whole videos, not first chunks")
    parser.add_argument("--out", type=Path, default=Path("runs/teacher_study"))
    parser.add_argument("--model", default=str(FLOW_WEIGHTS), help="sigma, samplers: the model probed")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=1000, help="train: stage-1 steps of a variant of multiplier 1")
    parser.add_argument("--init-from", default="", help="train: start from this model's weights, not from scratch")
    parser.add_argument("--per-prompt", type=int, default=4, help="train: renders of each training prompt")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    if args.probe == "sigma":
        for row in sigma_probe(args.model):
            append(results, {**row, "model": str(args.model)})
    elif args.probe == "samplers":
        for row in sampler_probe(args.model, args.out / "store"):
            append(results, {**row, "model": str(args.model)})
    elif args.probe == "judge":
        for model in args.files:
            scores = judged(model, args.out / "store", "method=cfg", "method.params.scale=4", whole=args.whole)
            append(results, {"probe": "judge", "model": model, "step": training_step(model),
                             "video": "whole" if args.whole else "first chunk", **scores})
    else:
        train_study(args, results)


if __name__ == "__main__":
    main()
