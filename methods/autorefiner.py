"""`autorefiner`: AutoRefiner (Yu et al. 2025, arXiv 2512.11203): pathwise noise refinement with a
reflective KV cache.

At every refined intermediate timestep t_j the sampler's fresh path noise ε (the noise that renoises
the previous step's x0 to t_j, Eq. 4) is replaced by ε + Δε, Δε = T_φ(ε; x0_{t_(j+1)}, x^{<i}) (Eq. 9-10):
T_φ is harness.train.adapters.NoiseRefiner, the base denoiser with LoRA deltas and an output layer that starts
at zero (untrained: Δε = 0, the method is `base` bit for bit). Its reflective KV cache (Sec. 3.4)
holds the clean past chunks (switch `history`) and the previous step's denoised output x0
(switch `previous_output`), which shares the noise's frame positions; the noise enters at the level
t_j it will be mixed at. The initial noise is not refined.

Ledger: one refiner call per refined step per chunk per video (Table 2: ΔNFE 21 for 7 chunks and the
three intermediate steps of the 4-step schedule); the previous output's K/V pass and the refiner's
history commits are counted as cache passes.

Training (Algorithm 1, harness.train.trainer): draw s among the refined steps; every chunk is rolled
out without gradient up to the refinement at s, which alone carries gradient, through the denoising
call that follows it, whose x0 ends the chunk (it is the chunk's output and fills the cache). The loss
adds reg_weight times ½||Δε_s||² (summed over chunks, averaged over videos). No gradient flows through
the history or the previous output.

Ablation switches (the paper's Tables 3, 4 and 6): `timesteps`, the refined intermediate timesteps
(any non-empty subset of the schedule's, named by the denoising step list: 750, 500, 250 for
Self-Forcing's 4 steps, warped or not), `history`,
`previous_output`, `rank` (and `alpha`). Null takes the checkpoint's value; training defaults: every intermediate timestep, both switches on, rank 8, alpha = rank.
`merge` (sampling only, default true): the refiner runs its deltas merged into a copy of its weights
(harness.train.adapters); false keeps the deltas where memory is tight.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from harness.errors import UsageError
from harness.models.base import ModelSpec, VideoModel
from harness.engine.context import Context
from harness.engine.samplers import Sampler
from harness.train.adapters import DEFAULT_RANK, NoiseRefiner, RefinerMethod, check_head, check_rank, check_switch


def intermediate_timesteps(sampler: Sampler) -> list[int]:
    """The timesteps the path noise renoises to, every step's but the first, as the denoising step list
    names them (Sampler.step_list): Self-Forcing's 750, 500, 250, warped to sigma 0.9375, 0.833, 0.625
    (the paper's Table 3 labels); CausVid's 757, 522."""
    return [round(t) for t in sampler.step_list[1:]]


@dataclass(frozen=True)
class AutoRefinerParams:
    checkpoint: str | None = None
    rank: int | None = None
    alpha: float | None = None
    history: bool | None = None
    head: str | None = None  # full | lora: how the zero-initialised output head trains (null: the checkpoint's)
    previous_output: bool | None = None
    timesteps: tuple[int, ...] | None = None
    merge: bool = True  # sample with the deltas merged into a copy of the weights (harness.train.adapters)

    def __post_init__(self) -> None:
        check_rank(self.rank, self.alpha)
        check_switch("history", self.history)
        check_head(self.head)
        check_switch("previous_output", self.previous_output)
        if self.timesteps is None:
            return
        ok = isinstance(self.timesteps, (list, tuple)) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in self.timesteps)
        if not ok or not self.timesteps:
            raise UsageError(f"method.params.timesteps={self.timesteps!r} is not a non-empty list of timesteps; "
                             "give a subset of the schedule's intermediate timesteps, e.g. [750, 500]")
        object.__setattr__(self, "timesteps", tuple(sorted(set(self.timesteps), reverse=True)))


class AutoRefiner(RefinerMethod):
    name = "autorefiner"
    description = ("AutoRefiner: a zero-initialised LoRA noise refiner of the intermediate path noises, "
                   "conditioned on the history and the previous denoised output (reflective KV cache)")
    Params = AutoRefinerParams
    cost = {"refiner": "intermediate", "refiner_history": "history", "refiner_previous": "previous_output"}
    legacy_arch: ClassVar[dict[str, Any]] = {"head": "lora"}
    arch_defaults: ClassVar[dict[str, Any]] = {"rank": DEFAULT_RANK, "alpha": None, "history": True, "head": "full",
                                               "previous_output": True, "timesteps": None}

    def complete(self, given: dict[str, Any], sampler: Sampler) -> dict[str, Any]:
        arch = super().complete(given, sampler)
        arch["timesteps"] = list(arch["timesteps"] or intermediate_timesteps(sampler))
        return arch

    def check(self, spec: ModelSpec, sampler: Sampler) -> None:
        schedule = intermediate_timesteps(sampler)
        if not schedule:
            raise UsageError(f"autorefiner refines intermediate path noises, and sampler.steps={sampler.steps} "
                             "has none; use 2 or more steps")
        outside = [t for t in self.arch["timesteps"] if t not in schedule]
        if outside:
            raise UsageError(f"method.params.timesteps {outside} are not intermediate timesteps of the schedule "
                             f"{schedule} (sampler.steps={sampler.steps}, shift={sampler.shift}); choose a "
                             "non-empty subset of those")
        self.refined = {k for k, t in enumerate(schedule) if t in self.arch["timesteps"]}  # step k renoises to t

    def exit_steps(self, sampler: Sampler) -> list[int]:
        return sorted(k + 1 for k in self.refined)

    def build(self, model: VideoModel) -> VideoModel:
        self.refiner = NoiseRefiner(model, self.arch["rank"], self.arch["alpha"], self.arch["history"],
                                    self.arch["previous_output"], self.arch["head"])
        self.adapted = self.refiner.module
        return self.sample_with(model, self.adapted)

    def path_noise(self, x: torch.Tensor, x0: torch.Tensor, ctx: Context) -> torch.Tensor:
        eps = super().path_noise(x, x0, ctx)
        if ctx.step not in self.refined:
            return eps
        with torch.set_grad_enabled(ctx.training and ctx.step + 1 == ctx.exit_step):
            delta = self.refine(eps, ctx.sampler.sigmas[ctx.step + 1], x0, ctx)
        self.penalise(delta, ctx)
        return eps + delta
