"""`clip_score`: frame-level text alignment of stored videos (CLIPScore, Hessel et al. 2021).

    per video = mean over frames of 2.5 * max(cos(image embedding, text embedding), 0)

through open_clip's ViT-B-32 with OpenAI's weights, loaded from a local file under `paths.weights`
(`refinery weights check metric=...` lists it). It is the `clip_score` verifier's network and formula
(harness/verifiers/clip_score.py) applied to finished videos, so a search method's verifier score
and its evaluation score are the same number when both use CLIP. On the shapes world CLIP is far out
of distribution; the world's own alignment scores are `world_alignment` and `world_bench`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from harness.verifiers.clip_score import VIT_B_32, ClipScore
from harness.engine.metric import Metric, VideoBatch


class ClipScoreMetric(Metric):
    name = "clip_score"
    version = "1"
    higher_is_better: ClassVar[dict[str, bool]] = {"clip_score": True}
    description = "frame-level CLIPScore against the prompt, open_clip ViT-B-32 (OpenAI weights, local file)"
    needs = ("prompt",)
    weights = (VIT_B_32,)

    def __init__(self, weights_dir: str | Path = "weights", **options: Any):
        super().__init__(weights_dir, **options)  # refuses a missing weights file before loading anything
        self.clip = ClipScore(self.weights_dir)

    @torch.no_grad()
    def score(self, batch: VideoBatch) -> dict[str, np.ndarray]:
        frames = torch.from_numpy(batch.videos).permute(0, 1, 4, 2, 3).float().div(255)
        scores = self.clip.score(frames, [r["prompt"] for r in batch.records])
        return {"clip_score": scores.double().numpy()}
