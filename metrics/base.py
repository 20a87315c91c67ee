"""The metric lifecycle (after torchmetrics): reset, update over batches of stored videos, compute.

A metric keeps one value per video for each of its outputs, so reports can put bootstrap
confidence intervals on every mean. Metadata on the class says which way is better, the version
(part of a score file's identity: a new version rescores), what inputs it needs and which weight
files it loads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np


@dataclass(frozen=True)
class WeightFile:
    relative_path: str  # under paths.weights
    origin: str  # where a user gets it


@dataclass(frozen=True)
class VideoBatch:
    """Stored videos as the metrics see them: uint8 (B, F, H, W, 3), and each video's record."""

    videos: np.ndarray
    records: list[dict[str, Any]]


class Metric:
    name: ClassVar[str]
    version: ClassVar[str]
    higher_is_better: ClassVar[dict[str, bool]]  # one entry per output
    description: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ()  # record fields it reads, e.g. ("prompt",)
    weights: ClassVar[tuple[WeightFile, ...]] = ()

    def __init__(self, **options: Any):
        self.options = options
        self.reset()

    def reset(self) -> None:
        self._values: dict[str, list[float]] = {k: [] for k in self.higher_is_better}

    def update(self, batch: VideoBatch) -> None:
        for key, values in self.score(batch).items():
            self._values[key].extend(float(v) for v in values)

    def compute(self) -> dict[str, np.ndarray]:
        """Per-video values of every output, in update order."""
        return {k: np.asarray(v, dtype=np.float64) for k, v in self._values.items()}

    def score(self, batch: VideoBatch) -> dict[str, np.ndarray]:
        """Per-video values for one batch; what a metric implements."""
        raise NotImplementedError
