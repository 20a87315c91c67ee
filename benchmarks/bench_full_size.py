"""Full-size Self-Forcing on a GPU: seconds per chunk, peak memory and FPS of base, bon (n = 5) and
autorefiner (untrained refiner: the same compute as a trained one), beside the AutoRefiner paper's
Table 2 (H100: base 10.3, BoN 2.48, AutoRefiner 6.32 FPS). Random bf16 weights of the real
architectures (Wan2.1-1.3B transformer, Wan2.1 VAE, umT5-xxl encoder), built on the device: nothing
is downloaded and no checkpoint is read, so the quality is noise but every cost is the real one.

    python benchmarks/bench_full_size.py [--repeats 2] [--size full|tiny] [--device cuda]

`--size tiny` runs the same code on a CPU in seconds (how it is checked without a GPU). The verifier
of BoN is a stand-in of fixed cost (the shapes world's reward does not apply to real videos): its
time is reported separately so that FPS can be read with and without it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.engine.ledger import Ledger
from harness.models.wan_causal.parts import ARCHITECTURES, TINY_TEXT, TINY_VAE  # noqa: E402
from harness.models.wan_causal.model import WanCausalConfig, WanCausalModel  # noqa: E402
from harness.models.wan_causal.text import WanTextEncoder, byte_tokenizer  # noqa: E402
from harness.engine.samplers import Sampler
from harness.engine.rollout import rollout
from harness.verifiers.base import Verifier  # noqa: E402
from methods.autorefiner import AutoRefiner  # noqa: E402
from methods.base import Base  # noqa: E402
from methods.bon import BestOfN  # noqa: E402

PAPER_FPS = {"base": 10.3, "bon": 2.48, "autorefiner": 6.32}  # AutoRefiner Table 2, Self-Forcing, H100
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)
PROMPT = "A corgi running on a beach at sunset, waves in the background, cinematic lighting"


class MeanColour(Verifier):
    """A verifier of negligible, fixed cost: the mean pixel value."""

    name = "mean_colour"

    def score(self, frames, prompts):
        return frames.float().mean(dim=(1, 2, 3, 4))


def build(size: str, device: torch.device) -> WanCausalModel:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    full = size == "full"
    dtype = torch.bfloat16 if full else torch.float32
    with torch.device(device):
        torch.manual_seed(0)
        transformer = WanTransformer3DModel(**ARCHITECTURES["wan2.1-t2v-1.3b" if full else "tiny"])
        vae = AutoencoderKLWan() if full else AutoencoderKLWan(**TINY_VAE)
        encoder = UMT5EncoderModel(UMT5Config(**(UMT5_XXL if full else TINY_TEXT)))
    text = WanTextEncoder(encoder.to(dtype).eval(), byte_tokenizer(512 if full else 64), 512 if full else 64)
    cfg = WanCausalConfig(name=f"self_forcing_{size}", height=480 if full else 32, width=832 if full else 32,
                          max_prompt_tokens=512 if full else 64)
    model = WanCausalModel(cfg, transformer, text, vae, "random", {"build": "random weights"})
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


SELF_FORCING_SAMPLER = Sampler(steps=4, shift=5.0, timesteps=(1000.0, 750.0, 500.0, 250.0))


def time_method(model, name: str, repeats: int, device: torch.device, sampler: Sampler = SELF_FORCING_SAMPLER,
                n: int = 5, prompts: tuple[str, ...] = (PROMPT,)) -> dict:
    """Median seconds (after one warm-up run), FPS and peak memory of one method on `prompts` (one batch)."""
    method = {"base": Base, "bon": lambda: BestOfN(n=n), "autorefiner": lambda: AutoRefiner(checkpoint=None)}[name]()
    method.prepare(model.spec, sampler, Path("weights"))
    if name == "bon":
        method.verifier = MeanColour(Path("weights"))
    seconds, ledgers = [], []
    for i in range(repeats + 1):  # the first run warms the kernels up and is not counted
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        ledger = Ledger()
        synchronize(device)
        start = time.perf_counter()
        result = rollout(model, method, list(prompts), [i] * len(prompts), sampler, ledger)
        synchronize(device)
        if i:
            seconds.append(time.perf_counter() - start)
            ledgers.append(ledger)
    wall = statistics.median(seconds)
    frames = result.videos.shape[0] * result.videos.shape[1]
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else float("nan")
    return {"method": name, "seconds": wall, "seconds_per_chunk": wall / model.spec.num_chunks,
            "fps": frames / wall, "peak_gib": peak, "nfe": ledgers[0].nfe,
            "decode_s": statistics.median(l.decode_seconds for l in ledgers),
            "verifier_s": statistics.median(l.verifier_seconds for l in ledgers), "frames": frames}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    started = time.perf_counter()
    model = build(args.size, device)
    print(f"built {args.size} Self-Forcing on {device} in {time.perf_counter() - started:.0f} s "
          f"({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'})", flush=True)
    rows = [time_method(model, name, args.repeats, device) for name in ("base", "bon", "autorefiner")]
    base_fps = rows[0]["fps"]
    for r in rows:
        r["fps_vs_base"] = r["fps"] / base_fps
        r["paper_fps"], r["paper_fps_vs_base"] = PAPER_FPS[r["method"]], PAPER_FPS[r["method"]] / PAPER_FPS["base"]
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}), flush=True)


if __name__ == "__main__":
    main()
