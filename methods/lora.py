"""`lora`: LoRA fine-tuning of the base denoiser, trained directly on the objective (the AutoRefiner
paper's "+LoRA" baseline, Tables 1, 2 and 7).

The method samples with the base model's trainable module carrying peft LoRA adapters on the
backend's adapter targets (every linear layer of the toy's denoiser; every linear layer of Wan's
transformer blocks, as LongLive adapts Self-Forcing), as deltas on the shared base weights
(harness.train.adapters): every denoising step and every cache pass runs the adapted weights, and
the ledger counts them as the base method's: ΔNFE 0. Untrained (B = 0) it is `base`, bit for bit.
Sampling merges the deltas into a copy of the adapted weights (`merge`, default true), so a step costs
a base step; `merge: false` keeps the deltas, and no second copy of the weights, where memory is tight.

Training (harness.train.trainer), as Self-Forcing trains its generator: roll out without gradient and
stop every chunk at one randomly chosen step (the same for all chunks of a rollout), whose denoising
call alone carries the gradient into the adapters. There is no regulariser: nothing is refined.

Parameters: checkpoint (a shipped tag such as `reward`, a path, or null: untrained), rank and alpha
(null: the checkpoint's; training defaults rank 8, alpha = rank), merge (sampling only; default true).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from harness.models.base import VideoModel
from harness.train.adapters import TrainedGenerator, adapted_copy, check_rank, trainable_backend


@dataclass(frozen=True)
class LoraParams:
    checkpoint: str | None = None
    rank: int | None = None
    alpha: float | None = None
    merge: bool = True  # sample with the deltas merged into a copy of the weights (harness.train.adapters)

    def __post_init__(self) -> None:
        check_rank(self.rank, self.alpha)


class Lora(TrainedGenerator):
    name = "lora"
    description = "LoRA on every linear layer of the base denoiser, fine-tuned on the objective (ΔNFE 0)"
    Params = LoraParams

    def build(self, model: VideoModel) -> VideoModel:
        self.adapted = adapted_copy(model, self.arch["rank"], self.arch["alpha"])
        return self.sample_with(model, self.adapted)

    def sample_with(self, model: VideoModel, module: nn.Module) -> VideoModel:
        return trainable_backend(model).with_trainable(module)
