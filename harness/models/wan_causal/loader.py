"""Building a `WanCausalModel` from its model config: from local folders (self_forcing, causvid), or
at the tiny test size from a fixed seed (wan_tiny).

Folders, all under `paths.weights` and in diffusers' layout:
- `transformer`: the causal generator, written by `refinery weights convert` from the upstream
  Self-Forcing / CausVid checkpoint (harness.models.wan_causal.convert);
- `text_encoder`, `tokenizer`, `vae`: from Wan-AI/Wan2.1-T2V-1.3B-Diffusers.
Every file is checked before anything loads; a missing one is named with where it comes from.
Nothing is downloaded: diffusers and transformers are called with `local_files_only`.
"""
from __future__ import annotations

import functools
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.errors import UsageError
from harness.store.files import file_sha256, sha256_hex
from harness.models.wan_causal.model import WanCausalConfig, WanCausalModel
from harness.models.wan_causal.parts import ARCHITECTURES, TINY_TEXT, TINY_VAE, WAN_DIFFUSERS, architecture, pretrained
from harness.models.wan_causal.text import WanTextEncoder, byte_tokenizer
from harness.models.weights import WeightFile, cast_keeping_fp32, module_digest, safetensors_digest

COMPONENTS = ("transformer", "text_encoder", "tokenizer", "vae")


def model_config(cfg: dict[str, Any]) -> WanCausalConfig:
    known = {f.name for f in fields(WanCausalConfig)}
    return WanCausalConfig(**{k: v for k, v in cfg.items() if k in known})


def _dtype(cfg: dict[str, Any]) -> torch.dtype:
    name = str(cfg.get("dtype", "float32"))
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise UsageError(f"model.dtype={name!r} is not a floating-point torch dtype; use float32 or bfloat16")
    return dtype


def _device(cfg: dict[str, Any]) -> torch.device:
    name = str(cfg.get("device", "cpu"))
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"model.device={name!r} is not a torch device; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"model.device={name} but this machine has no CUDA device; run where one is, "
                         "or set model.device=cpu (slow at full size)")
    return device


# ---------------------------------------------------------------------------------------------
# files


def component_files(cfg: dict[str, Any], weights_dir: Path) -> tuple[WeightFile, ...]:
    """Every file the model's folders must hold, relative to weights_dir, each with its origin."""
    if cfg.get("build") == "tiny":
        return ()
    files: list[WeightFile] = []
    for part in COMPONENTS:
        folder, origin = str(cfg[part]), str(cfg.get("origins", {}).get(part, WAN_DIFFUSERS))
        if part == "tokenizer":
            names = ["tokenizer_config.json", "tokenizer.json"]
        elif part == "text_encoder":
            names = ["config.json", *_safetensors_files(weights_dir / folder, "model")]
            if names[-1] == "model.safetensors":
                origin += " (or its sharded model.safetensors.index.json with the shards it names)"
        else:
            names = ["config.json", *_safetensors_files(weights_dir / folder, "diffusion_pytorch_model")]
        files += [WeightFile(f"{folder}/{name}", origin) for name in names]
    return tuple(files)


def _safetensors_files(folder: Path, stem: str) -> list[str]:
    """A single `<stem>.safetensors`, or a sharded one: its index and the shards the index names."""
    index = folder / f"{stem}.safetensors.index.json"
    if not index.is_file():
        return [f"{stem}.safetensors"]
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UsageError(f"{index} is corrupt; get it again from where the folder came from") from None
    return [index.name, *shards]


def check_files(cfg: dict[str, Any], weights_dir: Path) -> None:
    """One line per missing file: its expected path and where it comes from; before any compute."""
    missing = [f for f in component_files(cfg, weights_dir) if not (weights_dir / f.relative_path).is_file()]
    if missing:
        lines = "".join(f"\n  {weights_dir / f.relative_path}  <- {f.origin}" for f in missing)
        raise UsageError(f"model {cfg['name']!r} needs {len(missing)} weight files that are missing under "
                         f"paths.weights={weights_dir} (docs/real-models.md):{lines}")


# ---------------------------------------------------------------------------------------------
# loading


def load_wan_causal(cfg: dict[str, Any], weights_dir: Path) -> WanCausalModel:
    config = model_config(cfg)
    if cfg.get("build") != "tiny":
        check_files(cfg, weights_dir)  # the files first: the fix a new user needs before any other
    dtype, device = _dtype(cfg), _device(cfg)
    if cfg.get("build") == "tiny":
        transformer, text, vae = build_tiny(int(cfg.get("seed", 0)), config.max_prompt_tokens)
        source = {"build": f"tiny, seed {int(cfg.get('seed', 0))}"}
        digest, text_digest = module_digest(transformer, text.encoder, vae), module_digest(text.encoder)
    else:
        transformer, text, vae = _from_folders(cfg, weights_dir, config.max_prompt_tokens, dtype)
        source = {part: str(weights_dir / str(cfg[part])) for part in COMPONENTS}
        files = component_files(cfg, weights_dir)
        digest = folder_digest(weights_dir, files)
        text_folders = tuple(f"{cfg[part]}/" for part in ("text_encoder", "tokenizer"))
        text_digest = folder_digest(weights_dir, tuple(f for f in files if f.relative_path.startswith(text_folders)))
    model = WanCausalModel(config, transformer, text, vae, digest, source, dict(cfg.get("dmd_scores") or {}),
                           text_digest)
    return cast_keeping_fp32(model.to(device=device), dtype).eval().requires_grad_(False)


def _from_folders(cfg: dict[str, Any], weights_dir: Path, max_tokens: int, dtype: torch.dtype):
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    classes = {"transformer": WanTransformer3DModel, "text_encoder": UMT5EncoderModel, "tokenizer": AutoTokenizer,
               "vae": AutoencoderKLWan}
    parts = {part: pretrained(cls, weights_dir / str(cfg[part]), part, cfg["name"],
                              **({} if part == "tokenizer" else {"torch_dtype": dtype}))
             for part, cls in classes.items()}
    expected = architecture(str(cfg["architecture"]))
    got = {k: (tuple(v) if isinstance(v, list) else v) for k, v in parts["transformer"].config.items() if k in expected}
    wrong = [k for k, v in expected.items() if got.get(k) != (tuple(v) if isinstance(v, list) else v)]
    if wrong:
        raise UsageError(f"model {cfg['name']!r}: transformer in {weights_dir / str(cfg['transformer'])} is not "
                         f"{cfg['architecture']} ({wrong[0]}={got.get(wrong[0])!r}, expected {expected[wrong[0]]!r}); "
                         "convert the right checkpoint with `refinery weights convert`")
    return parts["transformer"], WanTextEncoder(parts["text_encoder"], parts["tokenizer"], max_tokens), parts["vae"]


def build_tiny(seed: int, max_tokens: int) -> tuple[nn.Module, WanTextEncoder, nn.Module]:
    """The tiny transformer, text encoder, tokenizer and VAE, each from its own fixed seed. Their
    zero-initialised-by-design layers get random values too, so every path changes the output."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = WanTransformer3DModel(**ARCHITECTURES["tiny"])
        torch.manual_seed(seed + 1)
        encoder = UMT5EncoderModel(UMT5Config(**TINY_TEXT))
        torch.manual_seed(seed + 2)
        vae = AutoencoderKLWan(**TINY_VAE)
    return transformer.eval(), WanTextEncoder(encoder.eval(), byte_tokenizer(max_tokens), max_tokens), vae.eval()


def save_tiny(folder: Path, seed: int = 0, max_tokens: int = 64) -> dict[str, str]:
    """Write the tiny components in the layout of the real folders (for tests of the folder path);
    returns the model config keys that point at them."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    transformer, text, vae = build_tiny(seed, max_tokens)
    paths = {part: f"tiny/{part}" for part in COMPONENTS}
    transformer.save_pretrained(folder / paths["transformer"], safe_serialization=True)
    text.encoder.save_pretrained(folder / paths["text_encoder"], safe_serialization=True)
    text.tokenizer.save_pretrained(folder / paths["tokenizer"])
    vae.save_pretrained(folder / paths["vae"], safe_serialization=True)
    return paths


# ---------------------------------------------------------------------------------------------
# digests


def folder_digest(weights_dir: Path, files: tuple[WeightFile, ...]) -> str:
    """A digest of every file's content (safetensors by their tensors and sorted header)."""
    # in component order; names without their folder, so a moved folder keeps its digest
    paths = [weights_dir / f.relative_path for f in files]
    return sha256_hex(chunk for path in paths for chunk in (path.name, _file_digest(path, *_stamp(path))))[:16]


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=256)
def _file_digest(path: Path, size: int, mtime_ns: int) -> str:
    """A file's digest, read once per process while its size and time stay (the model's digest and
    its text encoder's read the same 11 GB)."""
    return safetensors_digest(path) if path.suffix == ".safetensors" else file_sha256(path)
