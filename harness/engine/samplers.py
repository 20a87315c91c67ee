"""Samplers: the rule that gives the noise a step's clean prediction x0 is renoised with.

The rollout loop (harness.engine.rollout) is the same for every sampler; a sampler is registered by name in
harness.engine.registry.SAMPLERS (`sampler.kind`) and only decides the path noise:
- `stochastic` (Self-Forcing, CausVid): fresh Gaussian noise, keyed by (seed, chunk, step, candidate);
- `ode` (Euler): the noise implied by x and x0, so renoising is exactly an Euler step.
A new sampler is a class with a `path_noise(x, x0, ctx)` method, registered under its name.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar, Protocol

import torch

from harness.engine.registry import SAMPLERS
from harness.errors import UsageError
from harness.models.base import NoiseLevel, shift_sigmas
from harness.engine.noise import NoiseSource


class Position(Protocol):
    """What a path-noise rule reads of the rollout's Context (harness.engine.context)."""

    noise: NoiseSource
    chunk: int
    step: int
    sampler: "Sampler"

    @property
    def sigma(self) -> float: ...


TABLE_STEPS = 1000  # the training schedule both upstream samplers look timesteps up in


@dataclass(frozen=True)
class Sampler:
    """The noise levels of a few-step sampler, as Self-Forcing and CausVid define them.

    `timesteps` is the denoising step list (1000 = pure noise; None: 1000 * (1 - i / steps)). With
    `warp` (Self-Forcing's warp_denoising_step) each one is mapped through the timestep shift:
    sigma = shift(t / 1000), conditioned on 1000 * sigma (4 steps, shift 5: 1000, 937.5, 833.3, 625).
    Without (CausVid), the model is conditioned on the timestep as given and sigma is the entry of
    the shifted 1000-step schedule nearest to it (1000, 757, 522 with shift 8). Both read the values
    from upstream's own table (`flow_match_table`), so they are upstream's to the last bit."""

    kind: str = "stochastic"
    steps: int = 4
    shift: float = 1.0
    timesteps: tuple[float, ...] | None = None
    warp: bool = True

    def __post_init__(self) -> None:
        SAMPLERS.target(self.kind)  # an unknown kind is named with the closest registered ones
        if self.steps < 1:
            raise UsageError(f"sampler.steps={self.steps} is out of range; use 1 or more steps")
        if self.shift <= 0:
            raise UsageError(f"sampler.shift={self.shift} is out of range; use a positive shift")
        if self.timesteps is not None:
            t = list(self.timesteps)
            if len(t) != self.steps or not all(0 < a <= TABLE_STEPS for a in t) or any(a <= b for a, b in zip(t, t[1:])):
                raise UsageError(f"sampler.timesteps={t} is not {self.steps} decreasing timesteps in (0, "
                                 f"{TABLE_STEPS}]; give one per step (sampler.steps), e.g. [1000, 757, 522]")

    @property
    def step_list(self) -> list[float]:
        """The denoising step list the levels come from (1000 = noise): `timesteps`, or evenly spaced
        1000 (1 - i / steps). Steps are named by it (Self-Forcing's 750, 500, 250, whatever the warp)."""
        if self.timesteps is not None:
            return list(self.timesteps)
        return (TABLE_STEPS * torch.linspace(1.0, 0.0, self.steps + 1, dtype=torch.float64)[:-1]).tolist()

    @cached_property  # hooks read it at every step
    def sigmas(self) -> list[NoiseLevel]:
        """The noise level of every step, each with the timestep the model is conditioned on, as
        upstream's float32 FlowMatchScheduler table gives them (a warped timestep that falls between
        its entries, e.g. 3 even steps, takes the shift formula in float64)."""
        sigmas, timesteps = flow_match_table(self.shift)
        levels = []
        for t in self.step_list:
            if not self.warp:
                i = int((timesteps - t).abs().argmin())
                levels.append(NoiseLevel(sigmas[i].item(), t))
            elif float(TABLE_STEPS - t).is_integer():
                i = int(TABLE_STEPS - t)  # Self-Forcing: cat(timesteps, [0])[1000 - t]
                levels.append(NoiseLevel(sigmas[i].item(), timesteps[i].item()))
            else:
                levels.append(NoiseLevel(shift_sigmas(torch.tensor(t / TABLE_STEPS, dtype=torch.float64),
                                                      self.shift).item()))
        return levels


def flow_match_table(shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-Forcing's and CausVid's FlowMatchScheduler(shift, sigma_min=0, extra_one_step=True) after
    set_timesteps(1000): sigmas and timesteps, computed in float32 as upstream does, held as float64."""
    sigmas = torch.linspace(1.0, 0.0, TABLE_STEPS + 1, dtype=torch.float32)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return sigmas.double(), (sigmas * TABLE_STEPS).double()


def renoise(x0: torch.Tensor, eps: torch.Tensor, sigma: float) -> torch.Tensor:
    """The forward process of rectified flow: (1 - sigma) x0 + sigma eps."""
    return (1 - sigma) * x0 + sigma * eps


def sampler_path_noise(x: torch.Tensor, x0: torch.Tensor, ctx: Position) -> torch.Tensor:
    """The sampler's own path noise (below): fresh keyed noise, the ODE's implied noise, ..."""
    return SAMPLERS.get(ctx.sampler.kind).path_noise(x, x0, ctx)


class FreshNoise:
    name: ClassVar[str] = "stochastic"
    description: ClassVar[str] = "Self-Forcing's few-step sampler: renoise with fresh keyed Gaussian noise"

    def path_noise(self, x: torch.Tensor, x0: torch.Tensor, ctx: Position) -> torch.Tensor:
        return ctx.noise.path(ctx.chunk, ctx.step, candidates=x0.shape[0] // len(ctx.noise.seeds))


class ImpliedNoise:
    name: ClassVar[str] = "ode"
    description: ClassVar[str] = "the Euler ODE sampler: renoise with the noise x and x0 imply"

    def path_noise(self, x: torch.Tensor, x0: torch.Tensor, ctx: Position) -> torch.Tensor:
        return (x - (1 - ctx.sigma) * x0) / ctx.sigma


STOCHASTIC = FreshNoise()
ODE = ImpliedNoise()
