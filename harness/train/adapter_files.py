"""Adapter checkpoint files: what ships, what `refinery train` writes and what sampling a trained
method loads.

An adapter file is safetensors holding the adapter's trainable tensors only (LoRA A and B; a
refiner's output head when trained in full, `head: full`), with string metadata:
    format "refinery-adapter/1", method, arch (JSON: rank, alpha, the refiner's switches),
    base_model, base_digest (the digest of the weights it was trained on), step,
    config (JSON: the resolved training configuration).

Checkpoint names: a value without "/" and without a suffix is the tag of a shipped checkpoint for the
base model it adapts, assets/methods/<model>/<method>_<tag>.safetensors (model toy_sf, method
autorefiner, tag dmd_t750), so one tag names each base's own adapter; anything else is a path.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.assets import asset
from harness.errors import UsageError
from harness.store.files import canonical_json
from harness.models.weights import safetensors_digest, save_safetensors

if TYPE_CHECKING:
    import torch

FORMAT = "refinery-adapter/1"


def how_to_train(method: str, value: str, model: str) -> str:
    return (f"train it with `refinery train model={model} method={method} train.out={value} ...` (docs/training.md "
            "lists the command of every shipped checkpoint)")


def checkpoint_path(method: str, value: str, model: str) -> Path:
    """The file a checkpoint value names for base `model`: a shipped tag or a path (module docstring)."""
    if "/" not in value and not Path(value).suffix:
        return asset("methods", model, f"{method}_{value}.safetensors")
    return Path(value)


@dataclass(frozen=True)
class AdapterFile:
    path: Path
    method: str
    arch: dict[str, Any]
    base_model: str
    base_digest: str
    step: int
    config: dict[str, Any]
    state: dict[str, torch.Tensor]
    digest: str  # of the file's bytes: part of the key of every cell sampled with it


def save_adapter(path: Path, state: dict[str, torch.Tensor], method: str, arch: dict[str, Any],
                 base_model: str, base_digest: str, step: int, config: dict[str, Any]) -> None:
    save_safetensors(state, path, {"format": FORMAT, "method": method, "arch": canonical_json(arch),
                                   "base_model": base_model, "base_digest": base_digest, "step": str(step),
                                   "config": canonical_json(config)})


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file; a corrupt file is a one-line UsageError."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "np") as f:  # metadata only: "np" needs no torch
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UsageError(f"checkpoint {path} is corrupt or not a safetensors file ({str(exc).splitlines()[0]}); "
                         "delete it and train it again with `refinery train`") from None


def load_adapter(method: str, value: str, model: str) -> AdapterFile:
    """Read and check an adapter checkpoint for `method` on base `model`; every problem is a one-line
    UsageError."""
    from safetensors.torch import load_file

    path = checkpoint_path(method, value, model)
    if not path.is_file():
        raise UsageError(f"method {method!r} checkpoint {path} is missing; {how_to_train(method, value, model)}, or set "
                         "method.params.checkpoint to a trained file (null: the untrained adapter, i.e. base)")
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise UsageError(f"{path} is not a Refinery adapter checkpoint (its metadata has no format "
                         f"{FORMAT!r}); give a file written by `refinery train`")
    if meta["method"] != method:
        raise UsageError(f"checkpoint {path} was trained for method {meta['method']!r}, not {method!r}; "
                         f"use it with method={meta['method']} or give a {method} checkpoint")
    return AdapterFile(path, method, json.loads(meta["arch"]), meta["base_model"], meta["base_digest"],
                       int(meta["step"]), json.loads(meta["config"]), load_file(str(path)), safetensors_digest(path))
