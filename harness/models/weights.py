"""Weight files: what a run needs, where each is expected and where it comes from.

Nothing downloads at run time. Each model backend, verifier and metric declares its files as
`WeightFile`s, relative to `paths.weights` (external weights) or absolute (files that ship with the
package); a run refuses to start while any is missing, and `refinery weights check` lists them all.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from harness.errors import UsageError
from harness.store.files import atomic_write, sha256_hex

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class WeightFile:
    relative_path: str  # under paths.weights; an absolute path for a file that ships with the package
    origin: str  # where a user gets it


def check_weights(owner: str, weights_dir: Path, weights: Iterable[WeightFile]) -> None:
    """Refuse, before any compute, when weight files are missing: list each with where it comes from."""
    missing = [w for w in weights if not (weights_dir / w.relative_path).is_file()]
    if missing:
        listing = "; ".join(f"{weights_dir / w.relative_path} (from {w.origin})" for w in missing)
        raise UsageError(f"{owner} needs weight files that are missing: {listing}; "
                         f"place them under paths.weights={weights_dir}")


def save_safetensors(tensors: dict[str, Any], path: Path, metadata: dict[str, str]) -> None:
    """Write tensors (a state dict) with string metadata, atomically: a reader never sees half a file."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))


def load_safetensors(path: Path, what: str, rebuild: str, build: Callable[[dict[str, str]], Any]) -> Any:
    """A shipped network from safetensors only: `build(metadata)` makes the module its state loads into.
    A missing, corrupt or mismatched file is a one-line UsageError naming `what` and how to rebuild it."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    fix = f"restore it from the package or rebuild it with `{rebuild}`"
    if not path.is_file():
        raise UsageError(f"{what} weights {path} are missing; {fix}")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        module = build(meta)
        module.load_state_dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"{what} weights {path} are corrupt or do not fit the {what} network "
                         f"({reason}); {fix}") from None
    return module.eval().requires_grad_(False)


def safetensors_digest(path: Path) -> str:
    """A digest of a safetensors file's content: its header with sorted keys, then its data. The
    writer puts the metadata in hash-map order, which changes from process to process, so the same
    tensors and metadata can come out as different bytes; this digest does not change with it."""
    data = Path(path).read_bytes()
    size = int.from_bytes(data[:8], "little")
    # json.dumps' default separators, not canonical_json's: the digests of shipped files must not change
    header = json.dumps(json.loads(data[8 : 8 + size]), sort_keys=True)
    return sha256_hex((header, memoryview(data)[8 + size :]))[:16]


def module_digest(*modules: nn.Module) -> str:
    """A digest of the modules' tensors (names and float32 values), in order: the identity of loaded
    weights whatever files they came from."""
    return sha256_hex(chunk for module in modules for name, tensor in sorted(module.state_dict().items())
                      for chunk in (name, tensor.detach().float().contiguous().cpu().numpy().tobytes()))[:16]


def fp32_kept(module: nn.Module, dtype: "torch.dtype") -> set[str]:
    """The names whose tensors the module's own library keeps in float32 when it loads in `dtype`:
    diffusers' `_keep_in_fp32_modules` below float32 (its from_pretrained: norms, time embedder,
    scale-shift tables of Wan), transformers' `_keep_in_fp32_modules_strict` in float16 and bfloat16
    and its `_keep_in_fp32_modules` in float16 only (umT5's `wo`)."""
    import torch

    if not dtype.is_floating_point or dtype.itemsize >= 4:  # float32 and float64 (the tests' exact runs) keep all
        return set()
    kept = set(getattr(module, "_keep_in_fp32_modules_strict", None) or ())
    if dtype == torch.float16 or type(module).__module__.startswith("diffusers."):
        kept |= set(getattr(module, "_keep_in_fp32_modules", None) or ())
    return kept


def cast_keeping_fp32(module: nn.Module, dtype: "torch.dtype") -> nn.Module:
    """module.to(dtype), except the tensors every library module inside keeps in float32 (`fp32_kept`,
    matched as from_pretrained matches them: a name part of the tensor's dotted name)."""
    module.to(dtype)
    for prefix, owner in module.named_modules():
        kept = fp32_kept(owner, dtype)
        if not kept:
            continue
        for name, sub in owner.named_modules():
            for table in (sub._parameters, sub._buffers):
                for tensor_name, tensor in table.items():
                    parts = f"{name}.{tensor_name}".split(".") if name else [tensor_name]
                    if tensor is not None and tensor.is_floating_point() and kept.intersection(parts):
                        tensor.data = tensor.data.float()
    return module

def load_tensors(path: Path, **options: Any) -> Any:
    """torch.load(path, weights_only=True): only tensors and plain containers come out of the pickle,
    anything else raises. torch's warnings about a pickle's protocol are silenced, so that a refused
    file (a planted pickle) ends in the caller's one line and nothing before it."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, weights_only=True, **options)

