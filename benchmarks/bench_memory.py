"""Memory of the wan_causal backend: what a 1.3B Self-Forcing model needs per chunk and per candidate
(computed from its configuration), and, measured, the peak memory of Best-of-N (n = 5) against base at
the same batch, each in its own process, at a size where the KV cache dominates.

    .venv/bin/python benchmarks/bench_memory.py [--runs 3] [--batch 2] [--layers 4] [--width 512] [--latent 16]

Goal: the history cache is not multiplied by n. BoN's candidates are rows of one batch against a
cache of one row per video; each layer's history is copied once per call into that layer's attention
keys (n rows of it), so BoN's extra memory is n layers' worth of history, not n caches.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GiB = 2 ** 30


def wan_1_3b_needs(frames_per_chunk: int = 3, latent_frames: int = 21, tokens_per_frame: int = 1560,
                   layers: int = 30, dim: int = 1536, ffn: int = 8960, bytes_per: int = 2) -> dict[str, float]:
    """Computed from Wan2.1-1.3B's configuration at 480x832 (1560 tokens a latent frame) in bf16."""
    kv_frame = layers * tokens_per_frame * dim * 2 * bytes_per  # K and V of one latent frame, every layer
    history = latent_frames - frames_per_chunk  # what the last chunk attends to
    chunk_tokens = frames_per_chunk * tokens_per_frame
    return {"kv_per_latent_frame_gib": kv_frame / GiB,
            "kv_cache_per_video_gib": history * kv_frame / GiB,
            "per_candidate_attention_keys_gib": (history + frames_per_chunk) * kv_frame / layers / GiB,
            "per_candidate_activations_gib": chunk_tokens * (3 * dim + ffn) * bytes_per / GiB,
            "weights_transformer_gib": 1.419e9 * bytes_per / GiB}


def child(method: str, batch: int, layers: int, width: int, latent: int) -> None:
    import torch

    from harness.models.wan_causal.loader import build_tiny
    from harness.models.wan_causal.parts import ARCHITECTURES
    from harness.models.wan_causal.model import WanCausalConfig, WanCausalModel
    from harness.engine.samplers import Sampler
    from harness.engine.rollout import rollout
    from harness.world.prompts import eval_prompts
    from methods.base import Base
    from methods.bon import BestOfN

    from diffusers import WanTransformer3DModel

    torch.set_num_threads(2)
    _, text, vae = build_tiny(0, 64)
    arch = dict(ARCHITECTURES["tiny"], num_attention_heads=width // 64, attention_head_dim=64, ffn_dim=2 * width,
                num_layers=layers)
    torch.manual_seed(0)
    model = WanCausalModel(WanCausalConfig(name="bench", height=8 * latent, width=8 * latent, max_prompt_tokens=64),
                           WanTransformer3DModel(**arch).eval(), text, vae, "bench", {}).eval().requires_grad_(False)
    caches = []
    new_cache = model.new_cache
    model.new_cache = lambda b, start=0: caches.append(new_cache(b, start)) or caches[-1]
    method = BestOfN(n=5) if method == "bon" else Base()
    method.prepare(model.spec, Sampler(), Path("weights"))
    prompts = [p.text for p in eval_prompts()][:batch]
    result = rollout(model, method, prompts, list(range(batch)), Sampler())
    cache_bytes = sum(t.numel() * t.element_size() for kv in caches[0].layers for t in (kv.k, kv.v))
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "cache_mib": cache_bytes / 2 ** 20, "cache_rows": caches[0].layers[0].k.shape[0],
                      "nfe": result.ledger.nfe}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--child", choices=["base", "bon"])
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.batch, args.layers, args.width, args.latent)
    print("1.3B Self-Forcing, 480x832, bf16 (computed):", json.dumps(
        {k: round(v, 3) for k, v in wan_1_3b_needs().items()}))
    results: dict[str, list[dict]] = {"base": [], "bon": []}
    for _ in range(args.runs):
        for method in ("base", "bon"):  # alternating, one process each
            cmd = [sys.executable, __file__, "--child", method, "--batch", str(args.batch), "--layers",
                   str(args.layers), "--width", str(args.width), "--latent", str(args.latent)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ)).stdout
            results[method].append(json.loads(out.strip().splitlines()[-1]))
    for method, runs in results.items():
        peaks = ", ".join(f"{r['peak_rss_mib']:.0f}" for r in runs)
        print(f"{method}: peak RSS median {statistics.median(r['peak_rss_mib'] for r in runs):.0f} MiB "
              f"(runs {peaks}), stored KV cache "
              f"{runs[0]['cache_mib']:.1f} MiB in {runs[0]['cache_rows']} rows, NFE {runs[0]['nfe']}")
    base = statistics.median(r["peak_rss_mib"] for r in results["base"])
    bon = statistics.median(r["peak_rss_mib"] for r in results["bon"])
    print(f"bon - base peak: {bon - base:.0f} MiB; a copy of the history per candidate would add "
          f"{4 * results['base'][0]['cache_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
