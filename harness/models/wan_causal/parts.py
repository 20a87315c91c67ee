"""The Wan architectures the backend knows, and a diffusers part loaded from a local folder: what
the loader (building the sampling model) and the model (building DMD's score networks on demand) share."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.errors import UsageError, unknown_name
from harness.models.weights import WeightFile, cast_keeping_fp32, check_weights

WAN_DIFFUSERS = "https://huggingface.co/Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
# The transformer architectures the backend knows (diffusers' WanTransformer3DModel arguments).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    # Wan2.1-T2V-1.3B, the base of Self-Forcing and CausVid (diffusers' scripts/convert_wan_to_diffusers.py)
    "wan2.1-t2v-1.3b": dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                            out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
                            cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024),
    # the same code at a size that runs on a CPU in seconds (diffusers' own tiny test configuration)
    "tiny": dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
                 text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=32),
}
TINY_TEXT = dict(vocab_size=262, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                 feed_forward_proj="gated-gelu")  # umT5's shape, 262 = the byte tokenizer's vocabulary
TINY_VAE = dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])


def architecture(name: str) -> dict[str, Any]:
    if name not in ARCHITECTURES:
        raise unknown_name("model.architecture", name, ARCHITECTURES)
    return dict(ARCHITECTURES[name])


def pretrained(cls: Any, folder: Path, part: str, model: str, **kwargs: Any) -> Any:
    """cls.from_pretrained on a local folder; one that does not load is a UsageError naming it."""
    try:
        return cls.from_pretrained(str(folder), local_files_only=True, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"model {model!r}: the {part} folder {folder} does not load ({reason}); replace it with "
                         "a complete copy (`refinery weights check model=...` lists the files)") from None


def load_scores(name: str, scores: dict[str, Any], weights_dir: Path, dtype: torch.dtype,
                device: torch.device) -> tuple[nn.Module, nn.Module]:
    """DMD's real and fake score networks: bidirectional WanTransformer3DModels from the folders
    `scores` names, or at the tiny size two from seeds (the fake one starting as the real one, as
    Self-Forcing's critic starts from its teacher's weights when both are 1.3B)."""
    from diffusers import WanTransformer3DModel

    if not scores:
        raise UsageError(f"model {name!r} names no DMD score networks (model.dmd_scores); add real and fake folders")
    if scores.get("build") == "tiny":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(scores.get("seed", 0)))
            real = WanTransformer3DModel(**ARCHITECTURES["tiny"])
        fake = WanTransformer3DModel(**ARCHITECTURES["tiny"])
        fake.load_state_dict(real.state_dict())
    else:
        origin = {role: str(scores.get("origins", {}).get(role, WAN_DIFFUSERS)) for role in ("real", "fake")}
        check_weights(f"model {name!r} (DMD scores)", weights_dir,
                      [WeightFile(f"{scores[role]}/config.json", origin[role]) for role in ("real", "fake")])
        real, fake = (pretrained(WanTransformer3DModel, weights_dir / str(scores[role]), f"DMD {role} score",
                                 name, torch_dtype=dtype) for role in ("real", "fake"))
    return tuple(cast_keeping_fp32(net.to(device=device), dtype).eval().requires_grad_(False) for net in (real, fake))
