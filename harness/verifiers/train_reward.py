"""Train the `world_reward` verifier on the shapes world (one CPU core, about five minutes):

    python -m harness.verifiers.train_reward [--steps 1200] [--seed 0] [--threads 1] [--out PATH]

Positives are rendered clips of the training prompts with their prompt. Each is paired with a
negative: the same prompt and seed re-rendered with a wrong colour, shape, motion or a missing
object, or the clip itself blurred, noised, frozen or shuffled. The network learns to rank the
positive higher (logistic ranking loss). Most pairs are 3-frame chunks, what search methods score,
rendered with many seeds so that the reward generalises across layouts rather than memorising
videos; the rest are windows of up to the whole video.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from harness.train.fit import fit
from harness.verifiers.world_reward import SHIPPED_WEIGHTS, RewardConfig, RewardNet, WorldReward, bag_of_words, save_reward_net
from harness.world.grammar import COLOURS, MOTIONS, SHAPES, Scene, WorldObject, parse
from harness.world.prompts import eval_prompts, train_prompts
from harness.world.render import Track, render_tracks, tracks

FRAMES = 21  # the toy model's video length: 7 chunks of 3 frames
SIZE = 32
CHUNK = 3
SCENE_EDITS = ("colour", "shape", "motion", "missing")  # re-rendered with the positive's seed
EVAL_SEED = 900_000  # eval videos' seed; training seeds are small, so the two never meet


def edit_scene(scene: Scene, kind: str, rng: np.random.Generator) -> Scene | None:
    """The scene with one attribute changed, or None where the edit does not apply."""
    objects = list(scene.objects)
    i = int(rng.integers(len(objects)))
    if kind == "colour":
        objects[i] = WorldObject(str(rng.choice([c for c in COLOURS if c != objects[i].colour])), objects[i].shape)
    elif kind == "shape":
        objects[i] = WorldObject(objects[i].colour, str(rng.choice([s for s in SHAPES if s != objects[i].shape])))
    elif kind == "motion":
        return Scene(scene.objects, str(rng.choice([m for m in MOTIONS if m != scene.motion])))
    elif len(objects) == 2:  # missing: one of two objects is absent
        del objects[i]
    else:
        return None
    return Scene(tuple(objects), scene.motion)


def render_clip(scene: Scene, seed: int, window: slice) -> torch.Tensor:
    """Frames `window` of the scene's 21-frame video, uint8 (F, 3, H, W); only those frames are drawn.
    The same seed gives an edited scene the same trajectories, so colour and shape edits are minimal pairs."""
    paths = [Track(t.centres[window], t.radius) for t in tracks(scene, seed, FRAMES, SIZE)]
    video = render_tracks(scene, paths, SIZE)
    return torch.from_numpy(np.round(video * 255).astype(np.uint8)).permute(0, 3, 1, 2).contiguous()


@dataclass
class WorldPairs:
    """Rendered positive clips, their scene-edited negatives, and their prompts."""

    clips: list[torch.Tensor]  # uint8 (F, 3, H, W), all of one length
    prompts: list[str]  # one per positive
    positive: list[int]  # index into clips, per positive
    negatives: list[dict[str, int]]  # scene edit -> index into clips, per positive


def render_pairs(prompts: list[str], seeds: list[int], length: int, rng: np.random.Generator, desc: str) -> WorldPairs:
    """Every (prompt, seed) as a clip of `length` frames at a random offset, with its scene edits."""
    clips, texts, positive, negatives = [], [], [], []
    for prompt in tqdm(prompts, desc=desc, unit="prompt"):
        scene = parse(prompt)
        for seed in seeds:
            start = int(rng.integers(FRAMES - length + 1))
            window = slice(start, start + length)
            texts.append(prompt)
            positive.append(len(clips))
            clips.append(render_clip(scene, seed, window))
            edits = {}
            for kind in SCENE_EDITS:
                edited = edit_scene(scene, kind, rng)
                if edited is not None:
                    edits[kind] = len(clips)
                    clips.append(render_clip(edited, seed, window))
            negatives.append(edits)
    return WorldPairs(clips, texts, positive, negatives)


def blur(clip: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = 2
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    kernel = (k[:, None] * k[None, :]).expand(3, 1, -1, -1)
    padded = F.pad(clip, (radius,) * 4, mode="replicate")
    return F.conv2d(padded, kernel, groups=3)


def shuffle_order(frames: int, rng: np.random.Generator) -> list[int]:
    """A random frame order that is neither the original nor its reversal (a reversed clip of a
    bouncing shape is still a bouncing shape, not a corruption)."""
    identity = list(range(frames))
    while True:
        order = [int(i) for i in rng.permutation(frames)]
        if order not in (identity, identity[::-1]):
            return order


def corrupt_pixels(clip: torch.Tensor, kind: str, rng: np.random.Generator) -> torch.Tensor:
    """One pixel-level corruption of a float clip (F, 3, H, W) in [0, 1], F >= 3."""
    if kind == "blur":
        return blur(clip, float(rng.uniform(0.7, 1.6)))
    if kind == "noise":
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        return (clip + float(rng.uniform(0.04, 0.15)) * torch.randn(clip.shape, generator=gen)).clamp(0, 1)
    if kind == "frozen":  # from some frame on, the picture stops
        k = int(rng.integers(clip.shape[0] - 1))
        return torch.cat([clip[: k + 1], clip[k: k + 1].expand(clip.shape[0] - k - 1, -1, -1, -1)])
    return clip[shuffle_order(clip.shape[0], rng)]


def applicable(pairs: WorldPairs, i: int) -> list[str]:
    """Corruptions that change positive i: a still scene has nothing to freeze or shuffle."""
    kinds = list(pairs.negatives[i]) + ["blur", "noise"]
    if parse(pairs.prompts[i]).motion != "still":
        kinds += ["frozen", "shuffled"]
    return kinds


def negative_clip(pairs: WorldPairs, i: int, kind: str, window: slice, rng: np.random.Generator) -> torch.Tensor:
    if kind in SCENE_EDITS:
        return pairs.clips[pairs.negatives[i][kind]][window].float() / 255
    return corrupt_pixels(pairs.clips[pairs.positive[i]][window].float() / 255, kind, rng)


def sample_batch(pairs: WorldPairs, batch: int, length: int,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(positives, negatives, prompts): windows of `length` frames at random offsets."""
    pos, neg, prompts = [], [], []
    for i in rng.integers(len(pairs.prompts), size=batch):
        start = int(rng.integers(pairs.clips[0].shape[0] - length + 1))
        window = slice(start, start + length)
        pos.append(pairs.clips[pairs.positive[i]][window].float() / 255)
        kinds = applicable(pairs, i)
        # wrong content is what search must tell apart (clean-up is easy): scene edits weigh double
        weights = np.array([2.0 if k in SCENE_EDITS else 1.0 for k in kinds])
        neg.append(negative_clip(pairs, i, str(rng.choice(kinds, p=weights / weights.sum())), window, rng))
        prompts.append(pairs.prompts[i])
    return torch.stack(pos), torch.stack(neg), prompts


def ranking_loss(net: RewardNet, pos: torch.Tensor, neg: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    words = bag_of_words(prompts)
    s = net(torch.cat([pos, neg]), torch.cat([words, words]))
    s_pos, s_neg = s.chunk(2)
    # a corruption that happened to change nothing (e.g. a shape resting on the floor) teaches nothing
    changed = ((pos - neg).abs().flatten(1).amax(1) > 1 / 255).float()
    margin = (F.softplus(s_neg - s_pos) * changed).sum() / changed.sum().clamp(min=1)
    return margin + 1e-3 * s.pow(2).mean()  # keeps scores near zero, so they stay comparable across runs


def train_world_reward(out: Path = SHIPPED_WEIGHTS, steps: int = 1200, seed: int = 0, threads: int = 1,
                       batch: int = 32, lr: float = 2e-3, chunk_seeds: int = 8, video_seeds: int = 1,
                       prompts: list[str] | None = None) -> Path:
    """Train the reward from scratch (on the training prompts unless `prompts` is given) and write its
    safetensors file, with the training config, to `out`."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    prompts = prompts or train_prompts()
    chunks = render_pairs(prompts, list(range(chunk_seeds)), CHUNK, rng, "render chunks")
    videos = render_pairs(prompts, list(range(chunk_seeds, chunk_seeds + video_seeds)), FRAMES, rng, "render videos")
    cfg = RewardConfig()
    net = RewardNet(cfg)

    def batch_loss() -> torch.Tensor:  # chunks mostly, as search verifies them; whole clips too
        if rng.random() < 0.75:
            return ranking_loss(net, *sample_batch(chunks, batch, CHUNK, rng))
        return ranking_loss(net, *sample_batch(videos, batch, int(rng.integers(CHUNK + 1, FRAMES + 1)), rng))

    fit(net, batch_loss, steps, lr, "train world reward")
    # no wall time here: the same seed gives the same content, and so the same digest in results' keys
    # (harness.models.weights.safetensors_digest)
    training = {"steps": steps, "seed": seed, "batch": batch, "lr": lr, "chunk_seeds": chunk_seeds,
                "video_seeds": video_seeds, "prompts": len(prompts)}
    save_reward_net(net, cfg, Path(out), training)
    return Path(out)


def pairwise_accuracy(verifier: WorldReward, prompts: list[str], seeds: list[int], seed: int = 0) -> dict[str, float]:
    """How often a render outscores its corrupted version, per corruption and overall, on whole
    videos ("video") and on their 3-frame chunks ("chunk")."""
    rng = np.random.default_rng(seed)
    pairs = render_pairs(prompts, seeds, FRAMES, rng, "render eval")
    wins: dict[str, list[bool]] = {}
    with torch.no_grad():
        for i, prompt in enumerate(pairs.prompts):
            for kind in applicable(pairs, i):
                for scope, windows in (("video", [slice(0, FRAMES)]),
                                       ("chunk", [slice(s, s + CHUNK) for s in range(0, FRAMES, CHUNK)])):
                    pos = torch.stack([pairs.clips[pairs.positive[i]][w].float() / 255 for w in windows])
                    neg = torch.stack([negative_clip(pairs, i, kind, w, rng) for w in windows])
                    changed = (pos - neg).abs().flatten(1).amax(1) > 1 / 255
                    s = verifier.score(torch.cat([pos, neg]), [prompt] * (2 * len(windows)))
                    won = (s[: len(windows)] > s[len(windows):])[changed].tolist()
                    for key in (scope, f"{scope}/{kind}"):
                        wins.setdefault(key, []).extend(won)
    return {k: float(np.mean(v)) for k, v in sorted(wins.items())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SHIPPED_WEIGHTS)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    path = train_world_reward(args.out, args.steps, args.seed, args.threads)
    print(f"world reward written to {path} ({path.stat().st_size / 1e6:.2f} MB) "
          f"in {time.perf_counter() - start:.0f} s")
    accuracy = pairwise_accuracy(WorldReward(path=path), [p.text for p in eval_prompts()], [EVAL_SEED])
    print("held-out pairwise accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items()))


if __name__ == "__main__":
    main()
