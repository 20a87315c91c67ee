"""Resume state and the training log of `refinery train` (the adapter file it writes: harness.train.adapter_files).

Resume state: `<out stem>.steps/step-N/`, one folder per checkpointed step, the newest KEEP kept, all
removed once training completes. Each is a torch.distributed.checkpoint (DCP) checkpoint of the
trained state only (the adapter or its fp32 masters, AdamW's state of them, their average, the
objective's state: DMD's critic and its AdamW state), every rank writing its own shards of sharded
networks, plus `run.json` (the step, and the identity of the run that a resume must match). The
frozen base is never saved. Only tensors are saved: DCP reads them with torch.load(weights_only=True).
Its index (`.metadata`) is a pickle, which is read first by an unpickler that lets through only the
classes of a tensors-only checkpoint's layout, so a planted folder cannot run code (DCP would
unpickle anything else, non-tensor entries included, without that check). DCP reshards at load: a run written by N ranks resumes on M. There is no
RNG state to save: every random number of a step comes from generators keyed by (seed, step).

A step's folder is written as `step-N.partial` and renamed once whole, so a kill at any moment
leaves the previous step's folder to resume from; it is written before the adapter file.
Training log (`<out stem>.log.jsonl`): one JSON object per step; on resume it is cut back to the
resumed step, whose successors are computed again.
"""
from __future__ import annotations

import json
import pickle
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch

from harness.errors import UsageError
from harness.store.files import atomic_write_text, canonical_json

if TYPE_CHECKING:
    from harness.train.distributed import World

KEEP = 2  # step folders kept (torchtitan's keep_latest_k, which refuses 1)
RUN_FILE = "run.json"
# what the `.metadata` pickle of a tensors-only DCP checkpoint refers to (torch 2.14), besides torch's dtypes
LAYOUT = {("torch", "Size"), ("pathlib", "PosixPath"), ("torch.serialization", "_get_layout"),
          ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
          *(("torch.distributed.checkpoint.metadata", name) for name in (
              "Metadata", "MetadataIndex", "StorageMeta", "ChunkStorageMetadata", "TensorProperties",
              "TensorStorageMetadata", "_MEM_FORMAT_ENCODING"))}


class LayoutUnpickler(pickle.Unpickler):
    """Unpickles a DCP index only if it names nothing but LAYOUT's classes and torch's dtypes."""

    def find_class(self, module: str, name: str) -> Any:
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) not in LAYOUT and not dtype:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's layout")
        return super().find_class(module, name)


def resume_path(out: Path) -> Path:
    """The folder of a run's step folders."""
    return out.with_name(out.stem + ".steps")


def old_resume_path(out: Path) -> Path:
    """The one-file resume state (torch.save) that Refinery wrote before DCP checkpoints."""
    return out.with_name(out.stem + ".resume.pt")


def log_path(out: Path) -> Path:
    return out.with_name(out.stem + ".log.jsonl")


def step_folders(out: Path) -> list[Path]:
    """The complete step folders of a run, oldest first."""
    root = resume_path(out)
    found = [p for p in root.glob("step-*") if p.is_dir() and p.name[5:].isdigit()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[5:]))


def save_step(out: Path, step: int, state: dict[str, torch.Tensor], identity: dict[str, Any], world: World) -> None:
    """Write step `step`'s folder (module docstring); a collective: every rank calls it with its state."""
    import torch.distributed.checkpoint as dcp

    partial = resume_path(out) / f"step-{step}.partial"
    if world.is_writer:
        shutil.rmtree(partial, ignore_errors=True)  # a save that a kill cut short
        partial.mkdir(parents=True)
    world.barrier()  # the folder is empty before any rank writes into it
    with _one_process_quiet():
        dcp.save(state, checkpoint_id=partial, no_dist=not distributed())
    if world.is_writer:
        atomic_write_text(partial / RUN_FILE, canonical_json({"step": step, "identity": identity}))
        partial.rename(partial.with_name(f"step-{step}"))
        for old in step_folders(out)[:-KEEP]:
            shutil.rmtree(old)
    world.barrier()


def read_run(folder: Path) -> dict[str, Any]:
    """A step folder's step and identity, once its index is known to hold a checkpoint's layout only."""
    layout(folder)
    try:
        return json.loads((folder / RUN_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"resume state {folder} is unreadable ({type(exc).__name__}); delete {folder.parent} "
                         "(and its checkpoint) to train from the start") from None


def layout(folder: Path) -> dict[str, Any]:
    """A step folder's DCP index (entry name -> its tensor's metadata), read with LayoutUnpickler."""
    try:
        with (folder / ".metadata").open("rb") as f:
            return LayoutUnpickler(f).load().state_dict_metadata
    except Exception as exc:  # any unreadable or foreign index is the same problem to the user
        raise UsageError(f"resume state {folder} is unreadable or holds more than tensors ({exc}); delete "
                         f"{folder.parent} (and its checkpoint) to train from the start") from None


def load_step(folder: Path, sharded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every tensor of a step folder, in this process: those of `sharded` (this rank's DTensors or
    whole tensors, the layout to load into) in place, the others whole, allocated from the
    checkpoint's metadata. With no process group it reads the whole checkpoint in one process."""
    import torch.distributed.checkpoint as dcp

    state = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in layout(folder).items() if k not in sharded}
    state.update(sharded)
    with _one_process_quiet():
        dcp.load(state, checkpoint_id=folder, no_dist=not distributed())
    return state


@contextmanager
def _one_process_quiet() -> Iterator[None]:
    """DCP warns at every save and load without ranks, even one asked for (no_dist): not news."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def distributed() -> bool:
    """Whether ranks share this checkpoint (a process group); else one process reads or writes it all."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def section(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix`, without it."""
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def differing(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += differing(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(prefix + k)
    return keys


def refuse_old_resume(out: Path) -> None:
    old = old_resume_path(out)
    if old.exists():
        raise UsageError(f"{old} is resume state in the one-file format that this Refinery no longer reads; finish "
                         "that run with the Refinery that wrote it, or delete it (and "
                         f"{out.name}) to train from the start")


def remove_steps(out: Path) -> None:
    """A finished run's step folders (its adapter file is the product)."""
    shutil.rmtree(resume_path(out), ignore_errors=True)


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
