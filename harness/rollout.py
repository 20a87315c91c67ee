"""THE autoregressive sampling loop. Methods plug in at its hooks (harness.method.Method):

    for chunk in chunks:
        x = method.initial_noise(ctx)                      # noise refiners of the initial noise
        for step in steps:
            x0 = method.denoise(x, ctx)                    # guidance, predict-and-perturb
            if last step: break
            eps = method.path_noise(x, x0, ctx)            # pathwise refiners; the sampler's rule
            x = renoise(x0, eps, next sigma)
        x0 = method.finish_chunk(x0, ctx)                  # candidate selection
        commit x0 to the KV cache

Samplers differ only in the path noise: the stochastic sampler of Self-Forcing draws fresh noise,
the Euler ODE sampler reuses the noise implied by x and x0 (then renoise is exactly an Euler step).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from harness.errors import UsageError
from harness.ledger import CountingModel, Ledger
from harness.models.base import Cond, KVCache, VideoModel, shift_sigmas
from harness.noise import NoiseSource

if TYPE_CHECKING:
    from harness.method import Method

SAMPLERS = ("stochastic", "ode")


@dataclass(frozen=True)
class Sampler:
    kind: str = "stochastic"
    steps: int = 4
    shift: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in SAMPLERS:
            raise UsageError(f"unknown sampler.kind {self.kind!r}; use one of {', '.join(SAMPLERS)}")
        if self.steps < 1:
            raise UsageError(f"sampler.steps={self.steps} is out of range; use 1 or more steps")
        if self.shift <= 0:
            raise UsageError(f"sampler.shift={self.shift} is out of range; use a positive shift")

    @property
    def sigmas(self) -> list[float]:
        """Noise levels of the steps: timesteps 1000, ..., 1000/steps, warped by the shift."""
        base = torch.linspace(1.0, 0.0, self.steps + 1, dtype=torch.float64)[:-1]
        return shift_sigmas(base, self.shift).tolist()


def renoise(x0: torch.Tensor, eps: torch.Tensor, sigma: float) -> torch.Tensor:
    """The forward process of rectified flow: (1 - sigma) x0 + sigma eps."""
    return (1 - sigma) * x0 + sigma * eps


@dataclass
class Context:
    """What a hook may read: the model (counted), prompts, cache, noise, sampler, ledger, position."""

    model: CountingModel
    cond: Cond
    cache: KVCache
    noise: NoiseSource
    sampler: Sampler
    ledger: Ledger
    chunk: int = 0
    step: int = 0
    history: list[torch.Tensor] = field(default_factory=list)  # committed clean chunks

    @property
    def sigma(self) -> float:
        return self.sampler.sigmas[self.step]

    @property
    def is_last_step(self) -> bool:
        return self.step == self.sampler.steps - 1


@dataclass
class RolloutResult:
    videos: torch.Tensor  # (B, F, 3, H, W) in [0, 1]
    latents: torch.Tensor  # (B, F, C, h, w)
    ledger: Ledger


def sampler_path_noise(x: torch.Tensor, x0: torch.Tensor, ctx: Context) -> torch.Tensor:
    """The sampler's own path noise: fresh keyed noise, or the ODE's implied noise."""
    if ctx.sampler.kind == "stochastic":
        return ctx.noise.path(ctx.chunk, ctx.step)
    return (x - (1 - ctx.sigma) * x0) / ctx.sigma


def rollout(model: VideoModel, method: "Method", prompts: list[str], seeds: list[int], sampler: Sampler,
            ledger: Ledger | None = None) -> RolloutResult:
    """Generate one video per (prompt, seed) pair, chunk by chunk."""
    ledger = ledger or Ledger()
    counted = CountingModel(model, ledger)
    spec = model.spec
    with ledger.timed(), torch.inference_mode():
        cond = counted.encode(prompts)
        ctx = Context(counted, cond, counted.new_cache(len(prompts)),
                      NoiseSource(seeds, (spec.frames_per_chunk, *spec.latent_shape)), sampler, ledger)
        method.begin(ctx)
        for chunk in range(spec.num_chunks):
            ctx.chunk, ctx.step = chunk, 0
            x = method.initial_noise(ctx)
            for step, sigma in enumerate(sampler.sigmas):
                ctx.step = step
                x0 = method.denoise(x, ctx)
                if ctx.is_last_step:
                    break
                x = renoise(x0, method.path_noise(x, x0, ctx), sampler.sigmas[step + 1])
            x0 = method.finish_chunk(x0, ctx)
            ctx.history.append(x0)
            if chunk < spec.num_chunks - 1:  # the last chunk has no successor to attend to it
                counted.commit(x0, cond, ctx.cache)
        latents = torch.cat(ctx.history, dim=1)
        videos = counted.decode(latents)
        ledger.frames += videos.shape[0] * videos.shape[1]
    return RolloutResult(videos, latents, ledger)
