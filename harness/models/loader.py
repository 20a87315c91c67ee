"""Model construction from config; one loaded model per (backend, checkpoint) per process."""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from harness.models.toy import ToyVideoModel, load_toy


@lru_cache(maxsize=4)
def _cached_toy(checkpoint: str | None) -> ToyVideoModel:
    return load_toy(checkpoint)


def load_toy_model(cfg: dict[str, Any]) -> ToyVideoModel:
    """The toy backend at cfg['checkpoint'] (None: the shipped weights), for cfg['num_chunks']."""
    model = _cached_toy(cfg.get("checkpoint"))
    return model.with_chunks(int(cfg.get("num_chunks", model.cfg.num_chunks)))
