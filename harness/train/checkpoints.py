"""Adapter checkpoints, resume state and the training log of `refinery train`.

Adapter file (what ships, what sampling loads): safetensors holding the adapter's trainable tensors
only (LoRA A and B; a refiner's zeroed output layer is rebuilt, not stored), with string metadata:
    format "refinery-adapter/1", method, arch (JSON: rank, alpha, the refiner's switches),
    base_model, base_digest (the digest of the weights it was trained on), step,
    config (JSON: the resolved training configuration).
Resume state (`<out stem>.resume.pt`, removed once training completes): step, config, the adapter
tensors, the optimiser's and the objective's state; written with torch.save, read with
weights_only=True. It is self-sufficient and written before the adapter file, so a kill at any moment
leaves a whole state to resume from.
Training log (`<out stem>.log.jsonl`): one JSON object per step; on resume it is cut back to the
resumed step, whose successors are computed again.

Checkpoint names: a value without "/" and without a suffix is the tag of a shipped checkpoint,
methods/weights/<method>_<tag>.safetensors (method autorefiner, tag dmd_t750); anything else is a path.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.errors import UsageError
from harness.files import atomic_write, atomic_write_text, canonical_json
from harness.weights import safetensors_digest, save_safetensors

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "methods" / "weights"
FORMAT = "refinery-adapter/1"


def how_to_train(method: str, value: str) -> str:
    return (f"train it with `refinery train method={method} train.out={value} ...` (README, 'Training', "
            "lists the command of every shipped checkpoint)")


def checkpoint_path(method: str, value: str) -> Path:
    """The file a checkpoint value names: a shipped tag or a path (module docstring)."""
    if "/" not in value and not Path(value).suffix:
        return SHIPPED_DIR / f"{method}_{value}.safetensors"
    return Path(value)


def resume_path(out: Path) -> Path:
    return out.with_name(out.stem + ".resume.pt")


def log_path(out: Path) -> Path:
    return out.with_name(out.stem + ".log.jsonl")


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
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UsageError(f"checkpoint {path} is corrupt or not a safetensors file ({str(exc).splitlines()[0]}); "
                         "delete it and train it again with `refinery train`") from None


def load_adapter(method: str, value: str) -> AdapterFile:
    """Read and check an adapter checkpoint for `method`; every problem is a one-line UsageError."""
    from safetensors.torch import load_file

    path = checkpoint_path(method, value)
    if not path.is_file():
        raise UsageError(f"method {method!r} checkpoint {path} is missing; {how_to_train(method, value)}, or set "
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


def save_resume(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_resume(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception as exc:  # any unreadable file is the same problem to the user
        raise UsageError(f"resume state {path} is unreadable ({type(exc).__name__}); delete it (and its "
                         "checkpoint) to train from the start") from None


class TrainingLog:
    """The per-step JSONL log, cut back to `keep` steps when a run resumes."""

    def __init__(self, path: Path, keep: int):
        self.path = path
        kept = []
        if keep and path.is_file():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= keep]
        atomic_write_text(path, "".join(line + "\n" for line in kept))
        self.file = path.open("a")

    def append(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()
