"""Train the world probe on the shapes world (one CPU core, about ten minutes):

    refinery train-probe [steps=1500] [seed=0] [threads=1] [out=PATH]   (= python -m harness.world.probe_train)

Every training prompt is rendered with a few seeds. Each step takes windows of at least
MIN_WINDOW frames at random offsets, degrades them as generated videos are degraded (colour
jitter, then blur and pixel noise, each at a random strength or not at all) and teaches the
probe to read, from its frame embeddings, which (colour, shape) objects the clip shows, how many,
and how they move. Held-out accuracy is measured on the evaluation prompts (never trained on),
rendered with EVAL_SEED, a seed far from the training seeds, clean and degraded.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from harness.train.fit import fit
from harness.verifiers.train_reward import EVAL_SEED, FRAMES, blur, render_clip
from harness.world.grammar import Scene, parse
from harness.world.oracle import judge
from harness.world.probe import SHIPPED_WEIGHTS, Labels, ProbeConfig, WorldProbe, load_probe, save_probe, scene_labels
from harness.world.prompts import eval_prompts, train_prompts

MIN_WINDOW = 12  # shorter windows leave motions ambiguous (a fallen shape at rest looks still)
EVAL_NOISE = 0.05  # the degraded evaluation: blur sigma 1 and this much pixel noise


def render_videos(prompts: list[str], seeds: list[int], desc: str) -> tuple[torch.Tensor, list[Scene]]:
    """Every (prompt, seed) as a whole video: uint8 (N, F, 3, H, W), with each video's scene."""
    videos, scenes = [], []
    for prompt in tqdm(prompts, desc=desc, unit="prompt"):
        scene = parse(prompt)
        for seed in seeds:
            videos.append(render_clip(scene, seed, slice(0, FRAMES)))
            scenes.append(scene)
    return torch.stack(videos), scenes


def degrade(clip: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A float clip (F, 3, H, W) in [0, 1] as a generator might show it: colours a little off in
    brightness and balance, then, each half the time, blurred and noised."""
    gain = rng.uniform(0.8, 1.15) * rng.uniform(0.92, 1.08, size=3)
    out = clip * torch.tensor(gain, dtype=clip.dtype).view(1, 3, 1, 1) + float(rng.uniform(-0.04, 0.04))
    if rng.random() < 0.5:
        out = blur(out, float(rng.uniform(0.5, 1.6)))
    if rng.random() < 0.5:
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        out = out + float(rng.uniform(0.01, 0.08)) * torch.randn(out.shape, generator=gen)
    return out.clamp(0, 1)


def sample_batch(videos: torch.Tensor, labels: Labels, batch: int,
                 rng: np.random.Generator) -> tuple[torch.Tensor, Labels]:
    """Degraded windows of one random length (>= MIN_WINDOW) at random offsets, with their labels."""
    index = rng.integers(len(videos), size=batch)
    length = int(rng.integers(MIN_WINDOW, FRAMES + 1))
    clips = []
    for i in index:
        start = int(rng.integers(FRAMES - length + 1))
        clips.append(degrade(videos[i, start: start + length].float() / 255, rng))
    pick = torch.from_numpy(index)
    return torch.stack(clips), Labels(labels.objects[pick], labels.count[pick], labels.motion[pick])


def probe_loss(probe: WorldProbe, clips: torch.Tensor, labels: Labels) -> torch.Tensor:
    logits = probe.heads(probe.clip_embeddings(clips))
    # summed over the 15 object labels, as each cross-entropy sums over its classes: averaged, the
    # object term is too weak and the features settle on count and motion alone
    objects = F.binary_cross_entropy_with_logits(logits["objects"], labels.objects, reduction="sum") / len(clips)
    return (objects + F.cross_entropy(logits["count"], labels.count)
            + F.cross_entropy(logits["motion"], labels.motion))


def train_probe(out: Path = SHIPPED_WEIGHTS, steps: int = 1500, seed: int = 0, threads: int = 1,
                batch: int = 16, lr: float = 3e-3, video_seeds: int = 3,
                prompts: list[str] | None = None) -> Path:
    """Train the probe from scratch (on the training prompts unless `prompts` is given) and write its
    safetensors file, with the training config, to `out`."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    prompts = prompts or train_prompts()
    videos, scenes = render_videos(prompts, list(range(video_seeds)), "render")
    labels = scene_labels(scenes)
    probe = WorldProbe(ProbeConfig())
    fit(probe, lambda: probe_loss(probe, *sample_batch(videos, labels, batch, rng)), steps, lr, "train world probe")
    # no wall time here: the same seed gives the same tensors and metadata (harness.models.weights.safetensors_digest)
    training = {"steps": steps, "seed": seed, "batch": batch, "lr": lr, "video_seeds": video_seeds,
                "prompts": len(prompts)}
    save_probe(probe.eval(), Path(out), training)
    return Path(out)


def degraded(videos: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """uint8 (N, F, 3, H, W) blurred (sigma 1) and noised (EVAL_NOISE), deterministically."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.stack([blur(v.float() / 255, 1.0) for v in videos])
    out = out + EVAL_NOISE * torch.randn(out.shape, generator=gen)
    return (out.clamp(0, 1) * 255).round().to(torch.uint8)


def held_out_accuracy(probe: WorldProbe, prompts: list[str], seeds: list[int]) -> dict[str, float]:
    """The probe's accuracy, per world_alignment dimension (oracle.judge on its reading), on clean
    and degraded renders of `prompts` with `seeds`."""
    videos, scenes = render_videos(prompts, seeds, "render eval")
    out = {}
    for kind, clips in (("clean", videos), ("degraded", degraded(videos))):
        readings = probe.predict(clips.permute(0, 1, 3, 4, 2))
        verdicts = [judge(scene, reading) for scene, reading in zip(scenes, readings)]
        for dim in verdicts[0]:
            out[f"{kind}/{dim}"] = float(np.mean([v[dim] for v in verdicts]))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SHIPPED_WEIGHTS)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-seeds", type=int, default=5, help="seeds per evaluation prompt, from EVAL_SEED")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    path = train_probe(args.out, args.steps, args.seed, args.threads)
    print(f"world probe written to {path} ({path.stat().st_size / 1e6:.2f} MB) "
          f"in {time.perf_counter() - start:.0f} s")
    seeds = list(range(EVAL_SEED, EVAL_SEED + args.eval_seeds))
    accuracy = held_out_accuracy(load_probe(path), [p.text for p in eval_prompts()], seeds)
    print("held-out accuracy (eval prompts, seeds disjoint from training): "
          + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items()))


if __name__ == "__main__":
    main()
