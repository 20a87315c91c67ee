"""`lora`: LoRA fine-tuning of the base denoiser, trained directly on the objective (the AutoRefiner
paper's "+LoRA" baseline, Tables 1, 2 and 7).

The method trains a copy of the base model whose denoiser carries peft LoRA adapters on every
linear layer (harness.train.adapters) and samples with that copy's adapters merged into its weights,
so every denoising step and every cache pass runs the adapted weights at base's cost, and the ledger
counts them as the base method's: ΔNFE 0. Untrained (B = 0) it is `base`, bit for bit.

Training (harness.train.trainer), as Self-Forcing trains its generator: roll out without gradient and
stop every chunk at one randomly chosen step (the same for all chunks of a rollout), whose denoising
call alone carries the gradient into the adapters. There is no regulariser: nothing is refined.

Parameters: checkpoint (a shipped tag such as `reward`, a path, or null: untrained), rank and alpha
(null: the checkpoint's; training defaults rank 8, alpha = rank).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from harness.models.base import VideoModel
from harness.rollout import Context
from harness.train.adapters import MergedCopy, TrainedMethod, add_lora, check_rank, denoiser_of


@dataclass(frozen=True)
class LoraParams:
    checkpoint: str | None = None
    rank: int | None = None
    alpha: float | None = None

    def __post_init__(self) -> None:
        check_rank(self.rank, self.alpha)


class Lora(TrainedMethod):
    name = "lora"
    description = "LoRA on every linear layer of the base denoiser, fine-tuned on the objective (ΔNFE 0)"
    Params = LoraParams

    def build(self, model: VideoModel) -> VideoModel:
        denoiser_of(model)
        adapted = copy.deepcopy(model).requires_grad_(False)
        self.adapted = add_lora(adapted.denoiser, self.arch["rank"], self.arch["alpha"])
        self.merged = MergedCopy(adapted)
        return adapted

    def bind(self, model: VideoModel, training: bool = False) -> VideoModel:
        adapted = super().bind(model, training)
        # merged weights sample at base's cost (peft's unmerged adapters cost ~30% more per call)
        return adapted if training else self.merged.get()

    def denoise(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        with torch.set_grad_enabled(ctx.training and ctx.is_last_step):
            return super().denoise(x, ctx)
