"""Video rewards: the plug-in point of a text-video reward model, and `internvideo2`'s place in it.

The AutoRefiner paper's reward mixture (Appendix B) scores 4-frame clips taken 10 frames apart with
InternVideo2 (weight 0.25). A video reward is a Verifier with `input = "video"`: `score(frames,
prompts)` gets each video (or the clip the reward objective cut from it, `train.objective.params.
clip_frames` / `clip_interval`) and returns one score per row. To add one, subclass `VideoReward`,
load your network from files under `paths.weights` in `load`, score clips in `score_clips`, and
register the class (harness.engine.registry.VERIFIERS, or a plug-in package).

`internvideo2` declares the files InternVideo2-Stage2 1B (224p, 4 frames) needs; its network code is
a research repository, not a package Refinery can install, so with the files present it says how to
plug an implementation in rather than scoring anything.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from harness.errors import UsageError
from harness.verifiers.base import Verifier
from harness.engine.metric import WeightFile


class VideoReward(Verifier):
    """A text-video reward over clips (N, F, 3, H, W) in [0, 1]; differentiable if its network is."""

    input = "video"
    differentiable = True
    clip_frames: ClassVar[int] = 4  # what the network was trained on

    def __init__(self, weights_dir: Path):
        super().__init__(weights_dir)
        for weight in self.weights:
            self.weight_path(weight)  # a missing file is named with its origin, before any network is built
        self.load()

    def load(self) -> None:
        """Build the network from self.weight_path(...) files."""
        raise NotImplementedError

    def score(self, frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if frames.shape[0] != len(prompts):
            raise ValueError(f"{frames.shape[0]} clips but {len(prompts)} prompts")
        return self.score_clips(frames, prompts)

    def score_clips(self, clips: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError


class InternVideo2(VideoReward):
    name = "internvideo2"
    description = "InternVideo2-Stage2 1B video-text reward (the AutoRefiner paper's video reward); plug-in point"
    weights = (WeightFile("internvideo2/InternVideo2-stage2_1b-224p-f4.pt",
                          "https://huggingface.co/OpenGVLab/InternVideo2-Stage2_1B-224p-f4"),
               WeightFile("internvideo2/bert-large-uncased/config.json",
                          "https://huggingface.co/google-bert/bert-large-uncased (its text encoder's tokenizer and config)"))

    def load(self) -> None:
        raise UsageError("verifier 'internvideo2': its network code (OpenGVLab/InternVideo, multi_modality) is not a "
                         "package Refinery installs; subclass harness.verifiers.video_reward.VideoReward with it and "
                         "register that class as a verifier (docs/real-models.md)")
