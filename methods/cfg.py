"""`cfg` (classifier-free guidance) and `cfg_zero` (CFG-Zero*, Fan et al. 2025, arXiv 2503.18886).

Both run the conditional and the unconditional branch on the same latent at every step, in velocity
space (v = noise - x0, so v = (x - x0) / sigma), and return the x0 of the guided velocity v̂:
x0 = x - sigma * v̂. The unconditional branch attends to its own KV cache, filled with the
unconditional prompt "" at every commit, as Self-Forcing's and Wan's CFG do; so a step costs 2 NFE
per row and a commit 2 cache passes per row, both counted by the model wrapper.

CFG:       v̂ = v_u + w (v_c - v_u); w = 1 is the conditional model, w = 0 the unconditional one.
CFG-Zero*: s* = <v_c, v_u> / (||v_u||^2 + 1e-8) per row over the flattened chunk velocity (the
           per-sample choice of the official T2V pipeline and of diffusers, computed in float32);
           v̂ = s* v_u + w (v_c - s* v_u). With s* = 1 this is CFG.

Zero-init convention: `zero_init_steps` = K zeroes exactly the steps i < K (0-based), as diffusers'
`ClassifierFreeZeroStarGuidance` does, so 0 turns zero-init off and the count is what it says. The
official repository tests `i <= zero_steps`, i.e. its zero_steps = z is our zero_init_steps = z + 1
(Wan2.1 T2V: zero_steps=1 -> 2; SD3/Flux: zero_steps=0 -> 1). One integer can then express "none",
which the official form cannot without its separate use_zero_init flag.

What a zeroed step does (v̂ = 0, so the step's x0 is the noisy input x itself):
- ODE sampler: the implied path noise of (x, x0 = x) is x, so renoising is the identity Euler step
  x_{sigma'} = x_sigma: sampling starts from the initial noise at a lower sigma, as in the paper.
- stochastic sampler: the loop renoises that "x0" with fresh noise, (1 - sigma') x + sigma' eps, so
  the next step sees a noisy version of noise: the model is asked to treat the step's input as
  content. Nothing is special-cased: guidance changes only the prediction, the sampler stays the
  sampler's, so the harness measures what the method's definition does under each sampler.
A zeroed step calls no model (its output does not depend on one), so it costs 0 NFE in the ledger;
the official code runs both branches and multiplies by 0, which is wasted work, not part of the method.

Default zero_init_steps = 0: the official guideline is about 4% of the steps (1-2 of 25-50); with
the 4-step stochastic sampler one zeroed step is 25% of the steps and feeds noise as content into
the next step, and with the 8-step ODE sampler 4% rounds to 0 steps too.

Parameters are validated when the method is built (before any compute): scale finite and >= 0,
zero_init_steps an integer >= 0; zero_init_steps >= the sampler's steps is refused in `prepare`,
before any model call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.errors import UsageError
from harness.engine.method import Method
from harness.models.base import ModelSpec
from harness.engine.context import Context
from harness.engine.samplers import Sampler
from harness.engine.schema import option


def guided_velocity(v_c: torch.Tensor, v_u: torch.Tensor, scale: float,
                    s: torch.Tensor | float = 1.0) -> torch.Tensor:
    """s v_u + w (v_c - s v_u): CFG with s = 1, CFG-Zero* with s = s* (one value per row)."""
    scaled_uncond = s * v_u
    return scaled_uncond + scale * (v_c - scaled_uncond)


def optimized_scale(v_c: torch.Tensor, v_u: torch.Tensor) -> torch.Tensor:
    """CFG-Zero*'s s* per row, shaped to broadcast against the rows: argmin_s ||v_c - s v_u||^2."""
    c, u = v_c.flatten(1).float(), v_u.flatten(1).float()
    s = (c * u).sum(1) / (u.pow(2).sum(1) + 1e-8)
    return s.to(v_c.dtype).view(-1, *([1] * (v_c.dim() - 1)))


def cfg_zero_star_velocity(v_c: torch.Tensor, v_u: torch.Tensor, scale: float) -> torch.Tensor:
    return guided_velocity(v_c, v_u, scale, optimized_scale(v_c, v_u))


def check_scale(scale: float) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise UsageError(f"method.params.scale={scale!r} is out of range; use a finite number >= 0 "
                         "(1 = the conditional model, 0 = the unconditional one)")


@dataclass(frozen=True)
class CfgParams:
    scale: float = 3.0  # w

    def __post_init__(self) -> None:
        check_scale(self.scale)


@dataclass(frozen=True)
class CfgZeroParams:
    scale: float = 3.0  # w
    zero_init_steps: int = option(0, min=0)  # steps i < zero_init_steps get v̂ = 0 (module docstring)

    def __post_init__(self) -> None:
        check_scale(self.scale)


class ClassifierFreeGuidance(Method):
    name = "cfg"
    description = "classifier-free guidance v_u + w (v_c - v_u), the unconditional branch with its own KV cache"
    Params = CfgParams
    needs_uncond = True
    cost = {"branches": 2}

    def rows_per_video(self) -> int:
        return 2  # the conditional and the unconditional branch, each with its cache

    def begin(self, ctx: Context) -> None:
        batch = ctx.cache.batch
        ctx.state["uncond"] = ctx.model.encode([""] * batch)
        ctx.state["uncond_cache"] = ctx.model.new_cache(batch)
        super().begin(ctx)

    def denoise(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        v_c, v_u = self.velocities(x, ctx)
        return x - ctx.sigma * self.guide(v_c, v_u)

    def velocities(self, x: torch.Tensor, ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
        """Both branches' velocities; candidate rows (k per video) are expanded by the model, which
        repeats a cond and a cache of B rows to k * B rows, the unconditional ones like the conditional."""
        x0_c = ctx.model.denoise(x, ctx.sigma, ctx.cond, ctx.cache)
        x0_u = ctx.model.denoise(x, ctx.sigma, ctx.state["uncond"], ctx.state["uncond_cache"])
        return (x - x0_c) / ctx.sigma, (x - x0_u) / ctx.sigma

    def guide(self, v_c: torch.Tensor, v_u: torch.Tensor) -> torch.Tensor:
        return guided_velocity(v_c, v_u, self.params.scale)

    def commit(self, x0: torch.Tensor, ctx: Context) -> None:
        super().commit(x0, ctx)
        ctx.model.commit(x0, ctx.state["uncond"], ctx.state["uncond_cache"])


class CfgZeroStar(ClassifierFreeGuidance):
    name = "cfg_zero"
    description = "CFG-Zero*: per-sample optimised unconditional scale s* and zero-init of the first steps"
    Params = CfgZeroParams
    cost = {"branches": 2, "skipped_steps": "zero_init_steps"}

    def prepare(self, spec: ModelSpec, sampler: Sampler, weights_dir: Path) -> None:
        super().prepare(spec, sampler, weights_dir)
        if self.params.zero_init_steps >= sampler.steps:
            raise UsageError(f"method.params.zero_init_steps={self.params.zero_init_steps} zeroes every one of "
                             f"the sampler's {sampler.steps} steps; use fewer than {sampler.steps}")

    def denoise(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        if ctx.step < self.params.zero_init_steps:
            return x  # x - sigma * 0; no model call, see the module docstring
        return super().denoise(x, ctx)

    def guide(self, v_c: torch.Tensor, v_u: torch.Tensor) -> torch.Tensor:
        return cfg_zero_star_velocity(v_c, v_u, self.params.scale)
