"""The verifier contract: a score per video chunk, higher is better, used by search methods and as a
training reward. Verifiers load their weights from a local folder; a missing file is a UsageError
naming it and where it comes from, raised before any compute."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import ClassVar

import torch

from harness.errors import UsageError
from harness.store.files import file_chunks, sha256_hex
from harness.engine.metric import WeightFile


class Verifier:
    name: ClassVar[str]
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    differentiable: ClassVar[bool] = False  # gradients flow from the score to the pixels
    input: ClassVar[str] = "video"  # "frames": an image reward, averaged over the frames it is given
    weights: ClassVar[tuple[WeightFile, ...]] = ()

    def __init__(self, weights_dir: Path):
        self.weights_dir = Path(weights_dir)

    def weight_path(self, weight: WeightFile) -> Path:
        path = self.weights_dir / weight.relative_path
        if not path.is_file():
            raise UsageError(f"verifier {self.name!r} needs {path}, which is missing; get it from "
                             f"{weight.origin} and place it under paths.weights={self.weights_dir}")
        return path

    def score(self, frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """frames (N, F, 3, H, W) in [0, 1], one prompt per row -> (N,) scores, higher is better."""
        raise NotImplementedError

    def digest(self) -> str:
        """A content hash of the weights, part of the key of every cell that uses this verifier."""
        files = (file_chunks(self.weight_path(weight)) for weight in self.weights)
        return sha256_hex(itertools.chain([f"{self.name}/{self.version}"], *files))[:16]
