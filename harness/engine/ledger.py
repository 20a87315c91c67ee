"""Compute counters, incremented where the work happens: the model wrapper and the rollout loop.

Nothing here is derived by formula from a method's settings; every figure is counted or timed.
Units follow the AutoRefiner paper: NFE per batch element, decodes in latent chunks. A refiner call
(a noise refiner's forward on one chunk; the refiner is a LoRA copy of the denoiser) is one NFE in the
paper's units (Table 2: AutoRefiner ΔNFE 21): the refiner counts it in `nfe` and in `refiner_calls`.
"""
from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import torch

from harness.models.base import Cond, KVCache, ModelSpec, VideoModel


@dataclass
class Ledger:
    nfe: int = 0  # denoiser evaluations, one per batch element, refiner calls included (the paper's units)
    cache_passes: int = 0  # clean re-runs that fill the KV cache, per batch element
    refiner_calls: int = 0  # noise-refiner forwards (a LoRA copy of the denoiser), also counted in nfe
    verifier_calls: int = 0
    decodes: int = 0  # latent chunks decoded, per batch element
    frames: int = 0  # output frames, counted by the rollout loop
    wall_seconds: float = 0.0
    decode_seconds: float = 0.0  # the share of wall time spent decoding...
    verifier_seconds: float = 0.0  # ...and scoring with verifiers: what search costs beyond NFE
    peak_memory_mb: float = 0.0

    @contextmanager
    def timed(self) -> Iterator[None]:
        """Time the whole rollout and record its peak memory."""
        try:
            with self.clock("wall_seconds"):
                yield
        finally:
            self.peak_memory_mb = max(self.peak_memory_mb, peak_memory_mb())

    @contextmanager
    def clock(self, counter: str) -> Iterator[None]:
        """Add the time spent inside the block, its GPU work included (`work_clock`), to the `counter`
        seconds field."""
        start = work_clock()
        try:
            yield
        finally:
            setattr(self, counter, getattr(self, counter) + work_clock() - start)

    def per_video(self, videos: int) -> dict[str, Any]:
        """Each video's share of a batch's counters, plus the batch's throughput in frames/s."""
        shares = {k: v / videos for k, v in asdict(self).items() if k not in ("peak_memory_mb", "frames")}
        shares["peak_memory_mb"] = self.peak_memory_mb
        shares["fps"] = self.frames / self.wall_seconds if self.wall_seconds else 0.0
        shares["batch_size"] = videos
        return shares


def work_clock() -> float:
    """time.perf_counter() once every CUDA device's queued work has finished: CUDA kernels run
    asynchronously, so a clock read without synchronising times their launches, not their work.
    Nothing to wait for (and no CUDA context made) in a process that has not used CUDA."""
    if torch.cuda.is_initialized():
        for device in range(torch.cuda.device_count()):
            torch.cuda.synchronize(device)
    return time.perf_counter()


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

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def encode(self, prompts: list[str]) -> Cond:
        return self.inner.encode(prompts)

    def new_cache(self, batch: int, start: int = 0) -> KVCache:
        return self.inner.new_cache(batch, start)

    def denoise(self, x: torch.Tensor, sigma: float, cond: Cond, cache: KVCache) -> torch.Tensor:
        self.ledger.nfe += x.shape[0]
        return with_autograd(self.inner, "denoise")(x, sigma, cond, cache)

    def commit(self, x0: torch.Tensor, cond: Cond, cache: KVCache) -> None:
        self.ledger.cache_passes += x0.shape[0]
        self.inner.commit(x0, cond, cache)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self._count_decode(latents)
        with self.ledger.clock("decode_seconds"):
            return with_autograd(self.inner, "decode")(latents)

    def decode_next(self, latents: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        self._count_decode(latents)
        with self.ledger.clock("decode_seconds"):
            return with_autograd(self.inner, "decode_next")(latents, state)

    def _count_decode(self, latents: torch.Tensor) -> None:
        self.ledger.decodes += latents.shape[0] * latents.shape[1] // self.spec.frames_per_chunk


def with_autograd(model: VideoModel, name: str) -> Callable[..., Any]:
    """The backend's method `name`; while autograd is on (a training rollout), the function beneath
    its torch.no_grad decorator, which torch keeps as `__wrapped__`. Training thus differentiates the
    very code that samples, and sampling (inference mode) keeps the decorated call."""
    bound = getattr(model, name)
    raw = getattr(bound, "__wrapped__", None)
    if raw is None or not torch.is_grad_enabled():
        return bound
    return raw.__get__(model)
