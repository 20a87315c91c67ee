"""Samplers: the rule that gives the noise a step's clean prediction x0 is renoised with.

The rollout loop (harness.rollout) is the same for every sampler; a sampler is registered by name in
harness.registry.SAMPLERS (`sampler.kind`) and only decides the path noise:
- `stochastic` (Self-Forcing, CausVid): fresh Gaussian noise, keyed by (seed, chunk, step, candidate);
- `ode` (Euler): the noise implied by x and x0, so renoising is exactly an Euler step.
A new sampler is a class with a `path_noise(x, x0, ctx)` method, registered under its name.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:
    from harness.rollout import Context


class FreshNoise:
    name: ClassVar[str] = "stochastic"
    description: ClassVar[str] = "Self-Forcing's few-step sampler: renoise with fresh keyed Gaussian noise"

    def path_noise(self, x: torch.Tensor, x0: torch.Tensor, ctx: "Context") -> torch.Tensor:
        return ctx.noise.path(ctx.chunk, ctx.step, candidates=x0.shape[0] // len(ctx.noise.seeds))


class ImpliedNoise:
    name: ClassVar[str] = "ode"
    description: ClassVar[str] = "the Euler ODE sampler: renoise with the noise x and x0 imply"

    def path_noise(self, x: torch.Tensor, x0: torch.Tensor, ctx: "Context") -> torch.Tensor:
        return (x - (1 - ctx.sigma) * x0) / ctx.sigma


STOCHASTIC = FreshNoise()
ODE = ImpliedNoise()
