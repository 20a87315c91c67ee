"""The GPU half of issue 23 item 4 (tests/test_precision.py is the CPU half): on a CUDA device,

1. wan_tiny loaded in bfloat16 keeps in float32 exactly the transformer's `_keep_in_fp32_modules`;
   its bf16 videos against float32's (max and mean absolute difference, pixels in [0, 1]);
2. the ledger's clock waits for the GPU: a queue of matrix products timed by the ledger against
   CUDA events around the same work (ratio ~1), and against an unsynchronised perf_counter read
   (which sees only the launches);
3. prompt embeddings: a wan_tiny cell generated on the GPU encodes its prompts once, keeps them in the
   store, leaves the text encoder on the CPU, and a regeneration encodes nothing and writes the same
   bytes.

    python benchmarks/gpu_check_precision.py      # `make gpu-check` runs it; about a minute

Prints one JSON line of figures per check and exits 1 if any failed; without CUDA it prints one line
and exits 0 at once.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TINY = dict(name="wan_tiny", build="tiny", seed=0, architecture="tiny", height=32, width=32, max_prompt_tokens=64,
            num_chunks=3, device="cuda")


def check_fp32_modules() -> dict:
    import torch
    from diffusers import WanTransformer3DModel

    from harness.engine.rollout import rollout
    from harness.engine.samplers import Sampler
    from harness.models.wan_causal.loader import load_wan_causal
    from methods.base import Base

    keep = WanTransformer3DModel._keep_in_fp32_modules
    videos, wrong = {}, []
    for dtype in ("float32", "bfloat16"):
        model = load_wan_causal({**TINY, "dtype": dtype}, None)
        if dtype == "bfloat16":
            wrong = [n for n, p in model.transformer.named_parameters()
                     if p.dtype != (torch.float32 if set(n.split(".")) & set(keep) else torch.bfloat16)]
        videos[dtype] = rollout(model, Base(), ["a red circle bouncing"], [0], Sampler(steps=4, shift=5.0)).videos.float()
    diff = (videos["bfloat16"] - videos["float32"]).abs()
    return {"check": "fp32 modules under bf16", "ok": not wrong, "wrong_dtype": wrong[:5],
            "bf16_vs_fp32_max_abs": round(diff.max().item(), 5), "bf16_vs_fp32_mean_abs": round(diff.mean().item(), 6)}


def check_clock() -> dict:
    import torch

    from harness.engine.ledger import Ledger

    a = torch.randn(4096, 4096, device="cuda")
    for _ in range(3):
        a @ a  # warm-up: cuBLAS handles, clocks up
    torch.cuda.synchronize()

    def work() -> None:
        for _ in range(50):
            a @ a

    start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ledger = Ledger()
    with ledger.clock("wall_seconds"):
        start_event.record()
        work()
        end_event.record()
    events = start_event.elapsed_time(end_event) / 1000
    torch.cuda.synchronize()
    began = time.perf_counter()
    work()
    unsynced = time.perf_counter() - began
    torch.cuda.synchronize()
    ratio = ledger.wall_seconds / events
    return {"check": "ledger clock synchronises", "ok": 0.9 <= ratio <= 1.25, "ledger_s": round(ledger.wall_seconds, 4),
            "cuda_events_s": round(events, 4), "ledger_over_events": round(ratio, 3),
            "unsynchronised_s": round(unsynced, 4)}


def check_embeddings() -> dict:
    import torch

    from harness.experiment.pipeline import generate, resolve_run
    from harness.experiment.plans import compose
    from harness.models.wan_causal.text import WanTextEncoder
    from harness.store.cells import Store

    calls = []
    encode = WanTextEncoder.__call__
    WanTextEncoder.__call__ = lambda self, prompts: calls.append(len(prompts)) or encode(self, prompts)
    root = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        overrides = ["model=wan_tiny", "model.device=cuda", "model.dtype=bfloat16", "model.num_chunks=2",
                     "suite=world_smoke", "samples_per_prompt=1", "sampler.steps=2", f"paths.store={root}"]
        store = Store(root)
        run = resolve_run(compose(overrides))
        generate(run, store, progress=False)
        first = [p.read_bytes() for p in sorted(store.cell(run.key).path.glob("videos/*"))]
        encoder_device = str(next(run.model.text_encoder.parameters()).device)
        first_calls = len(calls)
        shutil.rmtree(store.cell(run.key).path)
        run.model.embedded.clear()  # as a new process: the store's files only
        generate(resolve_run(compose(overrides)), store, progress=False)
        again = [p.read_bytes() for p in sorted(store.cell(run.key).path.glob("videos/*"))]
    finally:
        WanTextEncoder.__call__ = encode
        shutil.rmtree(root, ignore_errors=True)
    ok = first_calls == 5 and len(calls) == first_calls and again == first and encoder_device == "cpu"
    return {"check": "prompt embeddings once, encoder off the GPU", "ok": ok, "encoder_calls_first": first_calls,
            "encoder_calls_second": len(calls) - first_calls, "videos_identical": again == first,
            "text_encoder_after": encoder_device, "gpu": torch.cuda.get_device_name()}


def main() -> int:
    if not (Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi")):  # before torch's import
        print("gpu_check_precision: no CUDA device on this machine; nothing checked")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu_check_precision: no CUDA device on this machine; nothing checked")
        return 0
    failed = 0
    for check in (check_fp32_modules, check_clock, check_embeddings):
        result = check()
        failed += not result["ok"]
        print(json.dumps(result), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
