"""`pnp`: Predict-and-Perturb with the uncertainty mask (Self-Refining Video Sampling, Jang et al.,
arXiv 2601.18577), following the official code (agwmon/self-refine-video, pipeline_wan_pnp.py).

At a step with K extra iterations (noise level sigma, chunk latent x):
    x0 = D(x)                                            the step's own prediction (1 NFE per row)
    for k = 1..K:                                        1 NFE per row each
        z_k  = (1 - sigma) x0 + sigma eps_k              Perturb back to the SAME level, fresh noise
        x0_k = D(z_k)                                    Predict
        U    = mean over latent channels |x0_k - x0|     per latent position (row, frame, h, w)
        certain = (U < tau) | certain                    union over the iterations (none before k = 1)
        x0 = where(certain, x0, x0_k); z = where(certain, z, z_k)   (z starts as x)
        stop when the certain fraction of a row exceeds certain_fraction
The step then goes on from (z, x0): the loop renoises x0 with the sampler's path noise, computed from
the blended latent z instead of the loop's x (`path_noise`). For the ODE sampler that is the noise
implied by (z, x0), so x_next = (1 - sigma') x0 + sigma' eps(z, x0) is exactly the official "last
z_next": an Euler step from the last perturbed latent, with certain positions keeping the previous
iteration's z_next (blending z and x0 with one mask blends their Euler steps with it). For the
stochastic sampler the refined x0 is renoised with the sampler's fresh path noise, as every x0 is.

Conventions:
- U is compared with the previous iteration's masked x0 (the official buffer), L1 over channels
  divided by their number (p_norm = 1, / z_dim).
- The early stop is per row (per video), not over the whole batch as in the official code (written
  for one video), so a video does not depend on its batch. A stopped row is frozen; the model is still
  run on the whole batch while any row goes on (a KV cache is not sliced through the model contract),
  and the ledger counts those calls: with batch_size 1 the cost is exactly the official code's.
- Perturbation noise is keyed: stream "pnp", step key step * 1000 + k (so k <= 999), leaving the
  base noise untouched; a run is deterministic and paired with base.
- Every hook defers to `super()`, so a subclass that also inherits a guidance method, with Params
  covering both (class X(PredictAndPerturb, ClassifierFreeGuidance)), refines guided predictions as
  the official code does (CFG inside every prediction, 2 NFE each).
- Schedule, two forms giving one per-step list of extra iterations:
  paper: `iterations` (K_f) extra iterations on the first `fraction` (alpha) of the steps, i.e. steps
         i < fraction * steps (at least one step for any fraction > 0, so alpha = 0.2 still refines
         step 0 of a 4-step sampler);
  code:  `plan`, entries [start, end, iterations] over inclusive 0-based step ranges, later entries
         winning where they overlap (the official `stochastic_plan`); when given it overrides the
         paper form. An entry of 0 iterations is skipped, as the official code skips it (it neither
         refines nor takes refinement away). A plan reaching past the sampler's last step is refused
         in `prepare`.
  The paper form's default (1 extra iteration on the first half of the steps) refines step 0, at
  sigma = 1.0, where the official plan never refines: its T2V plan starts at step 2 of 40 (sigma
  about 0.95 after the shift), because at sigma = 1 the perturbation replaces the latent by pure noise
  and the mask compares two predictions from noise. The official plan is `plan=[[2, 5, 3], [6, 13, 1]]`
  on 40 ODE steps (1.5x the NFE).
- At the last step the refined x0 is the chunk's output (the official last step has sigma' = 0,
  where z_next is x0).
- Parameters are validated when the method is built; a plan that does not fit the sampler's steps
  is refused in `prepare`; both before any compute.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from harness.errors import UsageError
from harness.engine.method import Method
from harness.models.base import ModelSpec
from harness.engine.context import Context
from harness.engine.cost import step_schedule
from harness.engine.samplers import Sampler, renoise
from harness.engine.schema import option

MAX_ITERATIONS = 999  # the noise key step * 1000 + k must not reach the next step's keys
PlanEntry = tuple[int, int, int]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_plan(plan: object) -> tuple[PlanEntry, ...]:
    shape = f"a list of [start, end, iterations] with 0 <= start <= end and 0 <= iterations <= {MAX_ITERATIONS}"
    if not isinstance(plan, (list, tuple)):
        raise UsageError(f"method.params.plan={plan!r} is malformed; use {shape}, e.g. [[0, 1, 2]]")
    for entry in plan:
        ok = (isinstance(entry, (list, tuple)) and len(entry) == 3 and all(map(_is_int, entry))
              and 0 <= entry[0] <= entry[1] and 0 <= entry[2] <= MAX_ITERATIONS)
        if not ok:
            raise UsageError(f"method.params.plan entry {entry!r} is malformed; use {shape}")
    return tuple(tuple(entry) for entry in plan)


@dataclass(frozen=True)
class PnpParams:
    tau: float = option(0.25, min=0)  # uncertainty threshold: U < tau is certain
    iterations: int = option(1, min=0, max=MAX_ITERATIONS)  # paper form: K_f extra iterations ...
    fraction: float = option(0.5, min=0, max=1)  # ... on the first `fraction` (alpha) of the steps
    plan: tuple[PlanEntry, ...] | None = None  # code form: [[start, end, iterations], ...]; overrides the above
    certain_fraction: float = option(0.999, min=0, max=1)  # stop a row's iterations once more than this is certain

    def __post_init__(self) -> None:
        if self.plan is not None:
            object.__setattr__(self, "plan", _check_plan(self.plan))

    def per_step(self, steps: int) -> list[int]:
        """Extra iterations at each of the sampler's steps (the schedule `refinery plan` counts too)."""
        return step_schedule(steps, self.iterations, self.fraction, self.plan)


def uncertainty(x0: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Mean absolute change over the latent channels, per latent position: (B, F, C, H, W) -> (B, F, H, W)."""
    return (x0 - previous).abs().mean(dim=2)


class PredictAndPerturb(Method):
    name = "pnp"
    description = ("Predict-and-Perturb: extra predict/renoise iterations at the same noise level on the early "
                   "steps, with the self-consistency uncertainty mask")
    Params = PnpParams
    cost = {"extra_iterations": "schedule"}

    def prepare(self, spec: ModelSpec, sampler: Sampler, weights_dir: Path) -> None:
        super().prepare(spec, sampler, weights_dir)
        self.extra = self.params.per_step(sampler.steps)  # refuses a plan that does not fit

    def denoise(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        x0 = super().denoise(x, ctx)
        ctx.state["latent"] = x
        if self.extra[ctx.step]:
            x0, ctx.state["latent"] = self.refine(x, x0, self.extra[ctx.step], ctx)
        return x0

    def refine(self, x: torch.Tensor, x0: torch.Tensor, iterations: int,
               ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
        """The inner loop of the module docstring: the refined x0 and the blended latent at sigma."""
        z, certain = x, None
        active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        for k in range(1, iterations + 1):
            z_k = renoise(x0, self.perturb_noise(x, k, ctx), ctx.sigma)
            x0_k = super().denoise(z_k, ctx)
            sure = uncertainty(x0_k, x0) < self.params.tau
            certain = sure if certain is None else sure | certain
            keep = (certain | ~active.view(-1, 1, 1, 1)).unsqueeze(2)  # stopped rows keep everything
            x0, z = torch.where(keep, x0, x0_k), torch.where(keep, z, z_k)
            active &= certain.flatten(1).float().mean(1) <= self.params.certain_fraction
            if not active.any():
                break
        return x0, z

    def perturb_noise(self, x: torch.Tensor, k: int, ctx: Context) -> torch.Tensor:
        candidates = x.shape[0] // len(ctx.noise.seeds)
        return ctx.noise.draw("pnp", ctx.chunk, ctx.step * 1000 + k, candidates)

    def path_noise(self, x: torch.Tensor, x0: torch.Tensor, ctx: Context) -> torch.Tensor:
        # The step goes on from the last (blended) perturbed latent, not the loop's x.
        return super().path_noise(ctx.state["latent"], x0, ctx)
