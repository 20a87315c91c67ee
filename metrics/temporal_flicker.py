"""VBench's temporal flickering formula, applied to the raw videos.

VBench scores (255 - MAE) / 255, MAE being the mean absolute difference of consecutive 8-bit frames.
Its protocol first keeps only static clips (a RAFT-based filter); this metric applies the formula to
every video as stored, so numbers are not comparable with VBench's published ones.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from harness.errors import UsageError
from harness.engine.metric import Metric, VideoBatch


def flicker_score(video: np.ndarray) -> float:
    """(255 - mean |frame[t+1] - frame[t]|) / 255 for one uint8 (F, H, W, 3) video."""
    # int16 because uint8 subtraction wraps around.
    diffs = np.abs(np.diff(video.astype(np.int16), axis=0))
    # Frames share one size, so the overall mean equals VBench's mean of per-pair means.
    mae = diffs.mean(dtype=np.float64)
    return (255.0 - mae) / 255.0


class TemporalFlicker(Metric):
    name: ClassVar[str] = "temporal_flicker"
    version: ClassVar[str] = "1"
    higher_is_better: ClassVar[dict[str, bool]] = {"score": True}
    description: ClassVar[str] = (
        "VBench temporal flickering formula (255 - MAE of consecutive 8-bit frames over all pixels "
        "and channels) / 255, on raw videos (VBench's static-clip filter is not applied)."
    )

    def score(self, batch: VideoBatch) -> dict[str, np.ndarray]:
        frames = batch.videos.shape[1]
        if frames < 2:
            raise UsageError(f"temporal_flicker: needs videos of at least 2 frames, got {frames}")
        # One video at a time: the int16 copy of a whole batch can be large.
        return {"score": np.array([flicker_score(v) for v in batch.videos], dtype=np.float64)}
