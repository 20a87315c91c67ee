"""`refinery weights convert`: a Self-Forcing or CausVid generator checkpoint -> a diffusers-layout
transformer folder (config.json + diffusion_pytorch_model.safetensors) under `paths.weights`.

Upstream saves `CausalWanModel` (original Wan parameter names) inside a wrapper: a torch `.pt` dict
whose `generator` / `generator_ema` entry holds keys prefixed `model.`, and FSDP, activation
checkpointing or torch.compile add `_fsdp_wrapped_module.`, `_checkpoint_wrapped_module.` or
`_orig_mod.` segments. diffusers' own renaming (`convert_wan_transformer_to_diffusers`, the one
`from_single_file` uses) strips only `model.diffusion_model.`, so those segments are removed first.
The result must fit the target architecture exactly: the first missing, unexpected or mis-shaped
key is named and nothing is written. The checkpoint is read with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from harness.errors import UsageError
from harness.models.weights import load_tensors
from harness.store.files import atomic_folder
from harness.models.wan_causal.parts import architecture

WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def upstream_name(key: str) -> str:
    """A parameter name as CausalWanModel names it: wrapper segments and the leading `model.` removed."""
    for segment in WRAPPER_SEGMENTS:
        key = key.replace(segment, "")
    return key[len("model."):] if key.startswith("model.") else key


def to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    return convert_wan_transformer_to_diffusers({upstream_name(k): v for k, v in state.items()})


def check_fits(converted: dict[str, torch.Tensor], target: dict[str, torch.Tensor], source: str, arch: str) -> None:
    """Refuse a state dict that does not fit the target model, naming the first mismatching key."""
    for name, tensor in target.items():
        if name not in converted:
            raise UsageError(f"{source} is not a {arch} generator: it has no tensor for {name!r}; convert a "
                             "Self-Forcing or CausVid checkpoint of this architecture")
        if tuple(converted[name].shape) != tuple(tensor.shape):
            raise UsageError(f"{source} is not a {arch} generator: {name!r} has shape "
                             f"{tuple(converted[name].shape)}, expected {tuple(tensor.shape)}")
    extra = sorted(set(converted) - set(target))
    if extra:
        raise UsageError(f"{source} is not a {arch} generator: it has an unexpected tensor {extra[0]!r}")


def read_checkpoint(path: Path, key: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UsageError(f"checkpoint {path} is missing; download it (docs/real-models.md) and pass its path")
    try:
        raw = load_tensors(path, map_location="cpu", mmap=True)
    except Exception as exc:  # a pickle that weights_only refuses, or a file that is not a torch checkpoint
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path} is not a torch checkpoint of tensors ({reason}); give the upstream .pt file") from None
    if not isinstance(raw, dict) or key not in raw or not isinstance(raw[key], dict):
        found = ", ".join(sorted(map(str, raw))) if isinstance(raw, dict) else type(raw).__name__
        raise UsageError(f"{path} has no {key!r} state dict (it holds: {found}); "
                         "use key=generator_ema (Self-Forcing) or key=generator (CausVid)")
    return raw[key]


def convert(checkpoint: Path, key: str, arch: str, out: Path) -> dict[str, Any]:
    """Convert, check, and write `out` atomically (a temporary folder renamed into place)."""
    from diffusers import WanTransformer3DModel

    if out.exists():
        raise UsageError(f"{out} exists; remove it or choose another out=")
    state = read_checkpoint(checkpoint, key)
    with torch.device("meta"):
        model = WanTransformer3DModel(**architecture(arch))
    converted = to_diffusers(state)
    check_fits(converted, model.state_dict(), str(checkpoint), arch)
    model.load_state_dict(converted, strict=True, assign=True)
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
    return {"tensors": len(converted), "parameters": sum(t.numel() for t in converted.values())}
