"""`world_reward`: a small learned reward for the shapes world, the stand-in for a real reward model.

A 3D CNN over the frames, conditioned on a bag-of-words embedding of the prompt (FiLM), scores how
well a clip (a 3-frame chunk or a whole video) shows the prompt, cleanly. It is trained by
`harness.verifiers.train_reward` to rank rendered videos above corrupted ones (wrong colour, shape,
motion or count; blur, noise, frozen or shuffled frames). It is deliberately NOT the oracle: a
learned, imperfect judge that search and reward training can over-optimise, so reward hacking is
visible when the oracle scores the same videos.
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from harness.assets import asset
from harness.store.files import sha256_hex
from harness.verifiers.base import Verifier
from harness.models.weights import WeightFile, load_safetensors, safetensors_digest, save_safetensors
from harness.world.grammar import VOCABULARY, parse

SHIPPED_WEIGHTS = asset("verifiers", "world_reward.safetensors")
REBUILD = "refinery train-reward"
WORDS = sorted(VOCABULARY)


@dataclass(frozen=True)
class RewardConfig:
    width: int = 24
    text_dim: int = 64


def bag_of_words(prompts: list[str]) -> torch.Tensor:
    """(N, |vocabulary|) word counts; "a" counts the objects. Word order (and so which colour goes
    with which shape) is lost on purpose: the video features must carry the binding."""
    return torch.stack([_word_counts(prompt) for prompt in prompts]) if prompts else torch.zeros(0, len(WORDS))


@functools.lru_cache(maxsize=4096)
def _word_counts(prompt: str) -> torch.Tensor:
    """One prompt's counts; cached because search verifies the same prompts at every step (parsing
    them cost a third of the network's time)."""
    index = {w: i for i, w in enumerate(WORDS)}
    counts = torch.zeros(len(WORDS))
    for word in parse(prompt).text.split():  # validates the prompt
        counts[index[word]] += 1
    return counts


class RewardNet(nn.Module):
    def __init__(self, cfg: RewardConfig):
        super().__init__()
        w = cfg.width
        # temporal kernels from the first layer on: motion at 1 px/frame is only visible at full resolution
        self.video = nn.Sequential(
            nn.Conv3d(3, w, 3, stride=(1, 2, 2), padding=1), nn.SiLU(),  # 16x16
            nn.Conv3d(w, 2 * w, 3, stride=(1, 2, 2), padding=1), nn.SiLU(),  # 8x8
        )
        self.words = nn.Sequential(nn.Linear(len(WORDS), cfg.text_dim), nn.SiLU())
        self.film = nn.Linear(cfg.text_dim, 4 * w)
        # the prompt modulates features at 8x8, where one object still spans a few cells, so what
        # follows can bind colour to shape
        self.fuse = nn.Sequential(
            nn.Conv3d(2 * w, 4 * w, 3, stride=(1, 2, 2), padding=1), nn.SiLU(),  # 4x4
            nn.Conv3d(4 * w, 4 * w, 1), nn.SiLU(),
        )
        self.head = nn.Sequential(nn.Linear(8 * w, 64), nn.SiLU(), nn.Linear(64, 1))

    def forward(self, frames: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """frames (N, F, 3, H, W) in [0, 1], word counts (N, V) -> (N,) scores."""
        h = self.video(frames.transpose(1, 2) * 2 - 1)  # (N, C, F, h, w)
        scale, shift = self.film(self.words(words))[:, :, None, None, None].chunk(2, dim=1)
        h = self.fuse(h * (1 + scale) + shift)
        # objects are small: max over space finds them; mean over time accepts any clip length
        pooled = torch.cat([h.amax(dim=(3, 4)).mean(2), h.mean(dim=(2, 3, 4))], dim=1)
        return self.head(pooled).squeeze(1)


def save_reward_net(net: RewardNet, cfg: RewardConfig, path: Path, training: dict) -> None:
    save_safetensors(net.state_dict(), path, {"reward_config": json.dumps(asdict(cfg)),
                                              "training": json.dumps(training)})


def load_reward_net(path: Path) -> RewardNet:
    """Load only through safetensors; a missing, corrupt or mismatched file is a one-line UsageError."""
    return load_safetensors(path, "world reward", REBUILD,
                            lambda meta: RewardNet(RewardConfig(**json.loads(meta.get("reward_config", "{}")))))


class WorldReward(Verifier):
    name = "world_reward"
    version = "1"
    description = "learned shapes-world reward: a prompt-conditioned 3D CNN trained to rank renders above corruptions"
    differentiable = True
    weights = (WeightFile(str(SHIPPED_WEIGHTS), f"ships with the package; rebuild it with `{REBUILD}`"),)

    def __init__(self, weights_dir: Path | None = None, path: Path | None = None):
        """The weights ship with the package, so `weights_dir` (external weights) is not read."""
        super().__init__(weights_dir or Path("."))
        self.path = Path(path) if path else SHIPPED_WEIGHTS
        self.net = load_reward_net(self.path)

    def score(self, frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if frames.shape[0] != len(prompts):
            raise ValueError(f"{frames.shape[0]} clips but {len(prompts)} prompts")
        net = self.net.to(frames.device)
        return net(frames.float(), bag_of_words(prompts).to(frames.device))

    def digest(self) -> str:
        return sha256_hex(f"{self.name}/{self.version}/{safetensors_digest(self.path)}")[:16]
