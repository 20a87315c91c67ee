"""`init_noise_refiner`: a noise refiner of each chunk's initial noise only (the AutoRefiner paper's
"+InitNoiseRefiner" baseline, after HyperNoise, Eyring et al. 2025): ε' = ε + T_φ(ε), once per chunk.

T_φ is harness.train.adapters.NoiseRefiner: the base denoiser with LoRA deltas and an output layer that starts
at zero, so the untrained refiner returns Δε = 0 and the method is `base` bit for bit. It sees the
initial noise at the first noise level, the prompt and (switch `history`) the clean past chunks
through its own KV cache, as a LoRA of an AR model does; there is no previous denoised output at the
initial noise. The base model then denoises the refined noise with the sampler's own path noises.
Ledger: one refiner call per chunk per video (Table 2: ΔNFE 7 for 7 chunks), and with history one
cache pass per committed chunk for the refiner's cache.

Training (harness.train.trainer): every chunk's refinement carries gradient, through the denoising
chain up to a randomly chosen exit step (the same for all chunks); the loss adds reg_weight times
½||Δε||² per refinement (summed over chunks, averaged over videos).

Parameters: checkpoint (shipped tag, path, or null: untrained), rank, alpha, history (null: the
checkpoint's; training defaults rank 8, alpha = rank, history on); merge (sampling only, default true:
the refiner runs its deltas merged into a copy of its weights; harness.train.adapters).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from harness.models.base import VideoModel
from harness.engine.context import Context
from harness.train.adapters import DEFAULT_RANK, NoiseRefiner, RefinerMethod, check_head, check_rank, check_switch


@dataclass(frozen=True)
class InitNoiseRefinerParams:
    checkpoint: str | None = None
    rank: int | None = None
    alpha: float | None = None
    history: bool | None = None
    head: str | None = None  # full | lora: how the zero-initialised output head trains (null: the checkpoint's)
    merge: bool = True  # sample with the deltas merged into a copy of the weights (harness.train.adapters)

    def __post_init__(self) -> None:
        check_rank(self.rank, self.alpha)
        check_switch("history", self.history)
        check_head(self.head)


class InitNoiseRefiner(RefinerMethod):
    name = "init_noise_refiner"
    description = ("a LoRA noise refiner of each chunk's initial noise, zero-initialised "
                   "(one refiner call per chunk)")
    Params = InitNoiseRefinerParams
    cost = {"refiner": "initial", "refiner_history": "history"}
    legacy_arch: ClassVar[dict[str, Any]] = {"head": "lora"}
    arch_defaults: ClassVar[dict[str, Any]] = {"rank": DEFAULT_RANK, "alpha": None, "history": True, "head": "full"}

    def build(self, model: VideoModel) -> VideoModel:
        self.refiner = NoiseRefiner(model, self.arch["rank"], self.arch["alpha"], self.arch["history"],
                                    previous=False, head=self.arch["head"])
        self.adapted = self.refiner.module
        return self.sample_with(model, self.adapted)

    def initial_noise(self, ctx: Context) -> torch.Tensor:
        eps = super().initial_noise(ctx)
        delta = self.refine(eps, ctx.sampler.sigmas[0], None, ctx)
        self.penalise(delta, ctx)
        return eps + delta
