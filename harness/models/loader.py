"""Model backends as the registry sees them: how to build one from its config, which files it reads.

A model config (sweeps/model/*.yaml) names its backend (`backend: toy | wan_causal`); the registry
maps backend names to these entries. Loaded models are kept per (config, weights folder), so the
cells of a sweep in one process share one copy.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from harness.store.files import canonical_json
from harness.models.base import VideoModel
from harness.models.weights import WeightFile


@dataclass(frozen=True)
class Backend:
    load: Callable[[dict[str, Any], Path], VideoModel]
    weight_files: Callable[[dict[str, Any], Path], tuple[WeightFile, ...]]


def _cached(build: Callable[[dict[str, Any], Path], VideoModel]) -> Callable[[dict[str, Any], Path], VideoModel]:
    """Keep up to two loaded models per backend (a sweep's cells, a DMD teacher beside its student)."""
    @lru_cache(maxsize=2)
    def by_key(key: str, weights_dir: str) -> VideoModel:
        return build(json.loads(key), Path(weights_dir))

    def load(cfg: dict[str, Any], weights_dir: Path) -> VideoModel:
        shared = {k: v for k, v in cfg.items() if k != "num_chunks"}  # views of one model differ only in length
        model = by_key(canonical_json(shared), str(weights_dir))
        return model.with_chunks(int(cfg["num_chunks"])) if "num_chunks" in cfg else model
    return load


def load_toy_model(cfg: dict[str, Any], weights_dir: Path) -> VideoModel:
    """The toy backend at cfg['checkpoint'] (None: the shipped weights of the model cfg['name']), named
    by its config: the name its cells and its shipped adapters go by."""
    from harness.models.toy import load_toy

    model = load_toy(cfg.get("checkpoint") or cfg["name"])
    model.name = cfg["name"]
    return model


def toy_weight_files(cfg: dict[str, Any], weights_dir: Path) -> tuple[WeightFile, ...]:
    from harness.models.toy import REBUILD, shipped_or_path

    checkpoint = cfg.get("checkpoint")
    origin = "your `refinery train-world out=...` or `refinery distill out=...` run" if checkpoint else \
        f"ships with the package; rebuild it with `{REBUILD.get(cfg['name'], 'refinery train-world')}`"
    return (WeightFile(str(shipped_or_path(checkpoint or cfg["name"])), origin),)


def load_wan_model(cfg: dict[str, Any], weights_dir: Path) -> VideoModel:
    from harness.models.wan_causal.loader import load_wan_causal

    return load_wan_causal(cfg, weights_dir)


def wan_weight_files(cfg: dict[str, Any], weights_dir: Path) -> tuple[WeightFile, ...]:
    from harness.models.wan_causal.loader import component_files

    return component_files(cfg, weights_dir)


TOY = Backend(_cached(load_toy_model), toy_weight_files)
WAN_CAUSAL = Backend(_cached(load_wan_model), wan_weight_files)
