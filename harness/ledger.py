"""Compute counters, incremented where the work happens: the model wrapper and the rollout loop.

Nothing here is derived by formula from a method's settings; every figure is counted or timed.
Units follow the AutoRefiner paper: NFE per batch element, decodes in latent chunks.
"""
from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import torch

from harness.models.base import Cond, KVCache, ModelSpec, VideoModel


@dataclass
class Ledger:
    nfe: int = 0  # denoiser evaluations, one per batch element
    cache_passes: int = 0  # clean re-runs that fill the KV cache, per batch element
    refiner_calls: int = 0
    verifier_calls: int = 0
    decodes: int = 0  # latent chunks decoded, per batch element
    frames: int = 0  # output frames, counted by the rollout loop
    wall_seconds: float = 0.0
    peak_memory_mb: float = 0.0

    @contextmanager
    def timed(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.wall_seconds += time.perf_counter() - start
            self.peak_memory_mb = max(self.peak_memory_mb, peak_memory_mb())

    def per_video(self, videos: int) -> dict[str, Any]:
        """Each video's share of a batch's counters, plus the batch's throughput in frames/s."""
        shares = {k: v / videos for k, v in asdict(self).items() if k not in ("peak_memory_mb", "frames")}
        shares["peak_memory_mb"] = self.peak_memory_mb
        shares["fps"] = self.frames / self.wall_seconds if self.wall_seconds else 0.0
        shares["batch_size"] = videos
        return shares


def peak_memory_mb() -> float:
    """Peak accelerator memory where there is one, else the process's peak resident set."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class CountingModel:
    """A VideoModel that counts every call into a ledger; the rollout only sees this wrapper."""

    def __init__(self, model: VideoModel, ledger: Ledger):
        self.inner = model
        self.ledger = ledger

    @property
    def spec(self) -> ModelSpec:
        return self.inner.spec

    def encode(self, prompts: list[str]) -> Cond:
        return self.inner.encode(prompts)

    def new_cache(self, batch: int) -> KVCache:
        return self.inner.new_cache(batch)

    def denoise(self, x: torch.Tensor, sigma: float, cond: Cond, cache: KVCache) -> torch.Tensor:
        self.ledger.nfe += x.shape[0]
        return self.inner.denoise(x, sigma, cond, cache)

    def commit(self, x0: torch.Tensor, cond: Cond, cache: KVCache) -> None:
        self.ledger.cache_passes += x0.shape[0]
        self.inner.commit(x0, cond, cache)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self.ledger.decodes += latents.shape[0] * latents.shape[1] // self.spec.frames_per_chunk
        return self.inner.decode(latents)
