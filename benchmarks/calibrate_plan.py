"""The measured rows of `refinery plan`'s calibration tables (sweeps/calibration/*.yaml), on this machine.

    .venv/bin/python benchmarks/calibrate_plan.py [--repeats 3]

1. Timing: seconds per model pass (denoiser forward: NFE or cache pass), per decoded latent chunk and
   per verifier call, from the ledger of base and bon (n = 3) rollouts of one video, 1 CPU thread, on
   toy_sf and wan_tiny (medians over repeats); peak RSS of the process after each model.
2. Activations for training: the bytes autograd keeps for backward (saved tensors, each storage once)
   of one transformer block of diffusers' Wan transformer, per token, at several widths, FFN widths
   and token counts, with and without gradient checkpointing of the block; fitted as
   bytes/token/block = a * dim + b * ffn (least squares), the model harness/experiment/planner.py
   extrapolates to Wan2.1-1.3B and 14B.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.engine.rollout import rollout  # noqa: E402
from harness.experiment.pipeline import load_model, sampler_from  # noqa: E402
from harness.experiment.plans import compose  # noqa: E402
from harness.engine.registry import METHODS  # noqa: E402


def timing(model_name: str, repeats: int) -> dict[str, float]:
    cfg = compose([f"model={model_name}", "method=bon", "method.params.n=3"])
    model, sampler = load_model(cfg), sampler_from(cfg)
    base, bon = METHODS.get("base")(), METHODS.get("bon")(n=3, verifier="world_reward")
    for method in (base, bon):
        method.prepare(model.spec, sampler, Path(cfg.paths.weights))
    passes, decodes, verifies = [], [], []
    for _ in range(repeats):
        for method in (base, bon):  # alternated
            ledger = rollout(model, method, ["a red circle moving right"], [0], sampler).ledger
            compute = ledger.wall_seconds - ledger.decode_seconds - ledger.verifier_seconds
            passes.append(compute / (ledger.nfe + ledger.cache_passes))
            decodes.append(ledger.decode_seconds / ledger.decodes)
            if ledger.verifier_calls:
                verifies.append(ledger.verifier_seconds / ledger.verifier_calls)
    return {"seconds_per_model_pass": statistics.median(passes), "seconds_per_decode": statistics.median(decodes),
            "seconds_per_verifier_call": statistics.median(verifies),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def saved_bytes(dim_heads: int, head_dim: int, ffn: int, tokens_side: int, checkpointed: bool) -> tuple[float, int]:
    """Bytes autograd saves for one block's backward, and the block's tokens (frames x side x side / 4)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=dim_heads, attention_head_dim=head_dim,
                                  in_channels=16, out_channels=16, text_dim=32, freq_dim=32, ffn_dim=ffn,
                                  num_layers=1, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                                  rope_max_seq_len=64)
    if checkpointed:
        model.enable_gradient_checkpointing()
    frames = 3
    x = torch.randn(1, 16, frames, tokens_side * 2, tokens_side * 2)
    text = torch.randn(1, 8, 32)
    block = model.blocks[0]
    seen: dict[int, int] = {}
    inside = {"on": False}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if inside["on"]:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    block.register_forward_pre_hook(lambda *_: inside.update(on=True))
    block.register_forward_hook(lambda *_: inside.update(on=False))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x, torch.tensor([500.0]), text).sample.sum()
    return float(sum(seen.values())), frames * tokens_side * tokens_side


def activations() -> dict[str, object]:
    rows = []
    for heads, head_dim, ffn, side in [(2, 16, 64, 8), (4, 16, 64, 8), (4, 16, 256, 8), (2, 32, 128, 12),
                                       (4, 32, 512, 12), (8, 16, 256, 16)]:
        full, tokens = saved_bytes(heads, head_dim, ffn, side, checkpointed=False)
        ckpt, _ = saved_bytes(heads, head_dim, ffn, side, checkpointed=True)
        rows.append({"dim": heads * head_dim, "ffn": ffn, "tokens": tokens, "bytes_per_token": full / tokens,
                     "checkpointed_bytes_per_token": ckpt / tokens})
    a = torch.tensor([[r["dim"], r["ffn"]] for r in rows], dtype=torch.float64)
    b = torch.tensor([r["bytes_per_token"] for r in rows], dtype=torch.float64)
    coef = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1)
    fitted = a @ coef
    worst = float(((fitted - b).abs() / b).max())
    return {"rows": rows, "bytes_per_token_per_block": {"per_dim": float(coef[0]), "per_ffn": float(coef[1])},
            "fit_worst_relative_error": worst, "dtype": "float32"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = {name: timing(name, args.repeats) for name in ("toy_sf", "wan_tiny")}
    out["activations"] = activations()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
