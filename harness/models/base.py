"""The model contract every backend implements (DESIGN.md, "The model contract").

Noise levels are sigmas in [0, 1] (timestep = 1000 * sigma). The flow convention is Wan's and
Self-Forcing's: x_sigma = (1 - sigma) * x0 + sigma * noise, velocity = noise - x0.
Latents are (B, F, C, H, W); videos are (B, F, 3, H, W) floats in [0, 1].

A denoise input may carry k candidates per cache entry: batch = cache batch * k, candidates of one
video adjacent (repeat_interleave order). This is how search methods batch their candidates.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """The timestep shift of SD3/Wan: sigma' = shift * sigma / (1 + (shift - 1) * sigma)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    frames_per_chunk: int
    num_chunks: int
    latent_shape: tuple[int, int, int]  # (C, H, W) of one latent frame
    video_shape: tuple[int, int, int]  # (3, H, W) of one decoded frame
    frames_per_latent: int = 1  # decoded frames per latent frame
    has_uncond: bool = True  # an unconditional branch exists, so CFG is possible
    fps: int = 8

    @property
    def num_latent_frames(self) -> int:
        return self.frames_per_chunk * self.num_chunks


@dataclass
class Cond:
    """Encoded prompts: per-token features and a padding mask (True = real token)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    prompts: tuple[str, ...] = ()

    def repeat(self, k: int) -> "Cond":
        if k == 1:
            return self
        return Cond(self.tokens.repeat_interleave(k, 0), self.mask.repeat_interleave(k, 0),
                    tuple(p for p in self.prompts for _ in range(k)))

    def select(self, index: torch.Tensor) -> "Cond":
        return Cond(self.tokens[index], self.mask[index], tuple(self.prompts[i] for i in index.tolist()))


@dataclass
class KVCache:
    """Per-layer keys and values of the committed clean chunks, (B, heads, tokens, head_dim) each."""

    batch: int
    frames: int = 0
    layers: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


class VideoModel(Protocol):
    spec: ModelSpec

    def encode(self, prompts: list[str]) -> Cond: ...

    def new_cache(self, batch: int) -> KVCache: ...

    def denoise(self, x: torch.Tensor, sigma: float, cond: Cond, cache: KVCache) -> torch.Tensor:
        """x0 prediction for a noisy chunk (B*k, F, C, H, W). Never mutates `cache`."""

    def commit(self, x0: torch.Tensor, cond: Cond, cache: KVCache) -> None:
        """Run the clean chunk at sigma 0 and append its keys and values to `cache`."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def digest(self) -> str:
        """A content hash of the weights, part of every result's key."""

    def describe(self) -> dict[str, Any]: ...
