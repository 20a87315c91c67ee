"""Resume state and the training log of `refinery train` (the adapter file it writes: harness.train.adapter_files).

Resume state (`<out stem>.resume.pt`, removed once training completes): step, config, the adapter
tensors, the optimiser's and the objective's state; written with torch.save, read with
weights_only=True. It is self-sufficient and written before the adapter file, so a kill at any moment
leaves a whole state to resume from.
Training log (`<out stem>.log.jsonl`): one JSON object per step; on resume it is cut back to the
resumed step, whose successors are computed again.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from harness.errors import UsageError
from harness.models.weights import load_tensors
from harness.store.files import atomic_write, atomic_write_text


def resume_path(out: Path) -> Path:
    return out.with_name(out.stem + ".resume.pt")


def log_path(out: Path) -> Path:
    return out.with_name(out.stem + ".log.jsonl")


def save_resume(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_resume(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return load_tensors(path)
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
