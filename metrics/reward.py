"""`reward`: a verifier's score of each stored video (the training reward of the reward-trained methods).

Reported beside held-out scores so that reward hacking shows: a method that raises this score while
world-bench's dynamics or quality falls is optimising the verifier, not the video (`refinery report`
flags it, see `report.reward_hacking`). The verifier scores the whole video at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.engine.registry import VERIFIERS
from harness.models.weights import WeightFile
from harness.engine.metric import Metric, VideoBatch


@dataclass(frozen=True)
class RewardOptions:
    verifier: str = "world_reward"  # a harness.engine.registry.VERIFIERS name


class Reward(Metric):
    name = "reward"
    version = "1"
    higher_is_better = {"world_reward": True}  # replaced per instance by the chosen verifier's name
    description = "a verifier's score of the whole video (option verifier, default world_reward)"
    needs = ("prompt",)
    Options = RewardOptions

    def __init__(self, weights_dir: str | Path = "weights", verifier: str = "world_reward", **options: Any):
        super().__init__(weights_dir, verifier=verifier, **options)
        self.higher_is_better = {verifier: True}
        self.verifier = VERIFIERS.get(verifier)(self.weights_dir)
        self.reset()

    @classmethod
    def required_weights(cls, options: dict[str, Any]) -> tuple[WeightFile, ...]:
        return VERIFIERS.get(cls.check_options(options).verifier).weights

    @torch.no_grad()
    def score(self, batch: VideoBatch) -> dict[str, np.ndarray]:
        frames = torch.from_numpy(batch.videos).permute(0, 1, 4, 2, 3).float().div(255)
        scores = self.verifier.score(frames, [r["prompt"] for r in batch.records])
        return {self.options["verifier"]: scores.double().numpy()}
