"""The metric lifecycle (after torchmetrics): reset, update over batches of stored videos, compute.

A metric keeps one value per video for each of its outputs, so reports can put bootstrap
confidence intervals on every mean. Metadata on the class says which way is better, the version
(part of a score file's identity: a new version rescores), what inputs it needs and which weight
files it loads, and its options as a dataclass (`Options`), checked before any compute: a typo, a
wrong type or an out-of-range value is one UsageError line.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from harness.engine.schema import check
from harness.models.weights import WeightFile, check_weights

__all__ = ["Metric", "VideoBatch", "WeightFile", "check_weights"]


@dataclass(frozen=True)
class VideoBatch:
    """Stored videos as the metrics see them: uint8 (B, F, H, W, 3), and each video's record."""

    videos: np.ndarray
    records: list[dict[str, Any]]


@dataclass(frozen=True)
class NoOptions:
    pass


class Metric:
    name: ClassVar[str]
    version: ClassVar[str]
    higher_is_better: ClassVar[dict[str, bool]]  # one entry per output
    description: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ()  # record fields it reads, e.g. ("prompt",)
    weights: ClassVar[tuple[WeightFile, ...]] = ()
    Options: ClassVar[type] = NoOptions

    def __init__(self, weights_dir: str | Path = "weights", **options: Any):
        self.check_options(options)
        self.weights_dir = Path(weights_dir)
        self.options = options  # as given: a score file stores them so, and they decide its staleness
        check_weights(f"metric {self.name!r}", self.weights_dir, self.required_weights(options))
        self.reset()

    @classmethod
    def check_options(cls, options: Mapping[str, Any] | None) -> Any:
        """The typed options (an `Options` instance); bad ones are a one-line UsageError."""
        return check(cls.Options, options, f"metric.{cls.name}")

    @classmethod
    def check_prompts(cls, prompts: list[str]) -> None:
        """Refuse, with a one-line UsageError before any compute, prompts this metric cannot score."""

    @classmethod
    def required_weights(cls, options: dict[str, Any]) -> tuple[WeightFile, ...]:
        """The weight files an instance with these options loads; a metric whose options pick a
        backbone narrows `weights` to that backbone's files. Checked before any compute."""
        return cls.weights

    def weight_path(self, weight: WeightFile) -> Path:
        return self.weights_dir / weight.relative_path

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
