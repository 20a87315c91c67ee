"""Model backends as the registry sees them: how to build one from its config, which files it reads."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

from harness.models.base import VideoModel
from harness.models.toy import SHIPPED_WEIGHTS, ToyVideoModel, load_toy
from harness.weights import WeightFile


@dataclass(frozen=True)
class Backend:
    load: Callable[[dict[str, Any]], VideoModel]
    weight_files: Callable[[dict[str, Any]], tuple[WeightFile, ...]]


@lru_cache(maxsize=4)
def _cached_toy(checkpoint: str | None) -> ToyVideoModel:
    return load_toy(checkpoint)


def load_toy_model(cfg: dict[str, Any]) -> ToyVideoModel:
    """The toy backend at cfg['checkpoint'] (None: the shipped weights), for cfg['num_chunks']."""
    model = _cached_toy(cfg.get("checkpoint"))
    return model.with_chunks(int(cfg.get("num_chunks", model.cfg.num_chunks)))


def toy_weight_files(cfg: dict[str, Any]) -> tuple[WeightFile, ...]:
    checkpoint = cfg.get("checkpoint")
    origin = "your `refinery train-world out=...` run" if checkpoint else \
        "ships with the package; rebuild it with `refinery train-world`"
    return (WeightFile(str(checkpoint or SHIPPED_WEIGHTS), origin),)


TOY = Backend(load_toy_model, toy_weight_files)
