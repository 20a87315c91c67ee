"""`make gpu-check`: does the real path work on this GPU machine? One script, at most 10 minutes.

    python benchmarks/gpu_check.py [--out gpu_check.json] [--weights weights]

Sections (each prints one JSON line; all are written to --out):
1. sampling: full-size self_forcing and causvid, real weights where every file is under paths.weights
   (`refinery weights check`), otherwise full-size random bf16 weights (noted: the costs are real, the
   videos noise): base, bon (n = 4) and autorefiner (untrained refiner, the trained one's compute) on 2
   prompts, FPS against upstream's published figure (Self-Forcing 10.3 FPS on one H100, AutoRefiner
   Table 2), peak memory against `refinery plan`'s estimate for the same batch;
2. precision: bf16 against fp32 on the same noise (2 chunks), and benchmarks/gpu_check_precision.py
   (the float32 modules kept under bf16, clocks that wait for the GPU);
3. shards: two workers of one cell (`run.workers=2`), where there are 2 GPUs;
4. training: 10 AutoRefiner DMD steps with FSDP, checkpointing and bf16 compute over fp32 masters
   (`train.devices` = the GPUs), with `refinery plan`'s estimate beside them.
Without a GPU it prints one line and exits 0 at once (no torch import).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED_FPS = {"self_forcing": {"base": 10.3, "bon": 2.48, "autorefiner": 6.32}}  # H100; BoN at n = 5
PROMPTS = ("A corgi running on a beach at sunset, waves in the background, cinematic lighting",
           "A red sports car drives along a winding mountain road, aerial view")


def has_gpu() -> bool:
    """An NVIDIA GPU is visible (decided without importing torch, so that a CPU machine answers at once)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    listed = subprocess.run([smi, "-L"], capture_output=True, text=True)
    return listed.returncode == 0 and "GPU" in listed.stdout


def emit(results: list[dict], row: dict) -> None:
    results.append(row)
    print(json.dumps(row), flush=True)


def sampling(model_name: str, weights: Path, results: list[dict]) -> None:
    import torch

    from bench_full_size import build, time_method
    from harness.engine.samplers import Sampler
    from harness.experiment.needed import needed_files
    from harness.experiment.pipeline import load_model, sampler_from
    from harness.experiment.plans import compose
    from harness.experiment.planner import calibration

    cfg = compose([f"model={model_name}", f"paths.weights={weights}"])
    real = all(f.present for f in needed_files(cfg))
    model = load_model(cfg) if real else build("full", torch.device("cuda"))
    sampler = sampler_from(cfg) if real else Sampler(steps=len(cfg.model.sampling.timesteps), shift=cfg.model.sampling.shift,
                                                      timesteps=tuple(map(float, cfg.model.sampling.timesteps)))
    table = calibration(model_name)["memory_gb"]
    for name in ("base", "bon", "autorefiner"):
        row = time_method(model, name, 1, torch.device("cuda"), sampler, n=4, prompts=PROMPTS)
        rows = len(PROMPTS) * (4 if name == "bon" else 1)
        row.update(model=model_name, weights="real" if real else "RANDOM full-size bf16 (costs real, videos noise)",
                   published_fps=PUBLISHED_FPS.get(model_name, {}).get(name),
                   planned_peak_gb=table["resident"] + rows * table["per_row"],
                   peak_gb=row.pop("peak_gib") * 2**30 / 1e9)
        emit(results, {"section": "sampling", **row})
    del model
    torch.cuda.empty_cache()


def precision(results: list[dict]) -> None:
    import torch

    from bench_full_size import SELF_FORCING_SAMPLER, build
    from harness.engine.rollout import rollout
    from methods.base import Base

    videos = {}
    for dtype in ("float32", "bfloat16"):
        model = build("full", torch.device("cuda")).with_chunks(2)
        if dtype == "float32":
            model = model.float()
        videos[dtype] = rollout(model, Base(), list(PROMPTS[:1]), [0], SELF_FORCING_SAMPLER).videos.float().cpu()
        del model
        torch.cuda.empty_cache()
    diff = (videos["float32"] - videos["bfloat16"]).abs()
    emit(results, {"section": "precision", "bf16_vs_fp32_max_abs": float(diff.max()),
                   "bf16_vs_fp32_mean_abs": float(diff.mean()), "note": "random full-size weights, 2 chunks"})
    extra = ROOT / "benchmarks" / "gpu_check_precision.py"
    done = subprocess.run([sys.executable, str(extra)], capture_output=True, text=True, timeout=180)
    emit(results, {"section": "precision", "script": extra.name, "rc": done.returncode,
                   "output": done.stdout[-2000:] + done.stderr[-1000:]})


def shards(results: list[dict]) -> None:
    import torch

    if torch.cuda.device_count() < 2:
        emit(results, {"section": "shards", "status": f"skipped: {torch.cuda.device_count()} GPU(s)"})
        return
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "harness.cli", "run", "model=self_forcing", "run.workers=2",
                           "suite=list", f"suite.prompts=[{PROMPTS[0]},{PROMPTS[1]}]", "samples_per_prompt=2",
                           "batch_size=1", "paths.store=/tmp/gpu_check_store"], capture_output=True, text=True,
                          timeout=240, cwd=ROOT)
    emit(results, {"section": "shards", "rc": done.returncode, "seconds": time.perf_counter() - started,
                   "output": done.stdout[-1500:] + done.stderr[-1500:]})


def training(results: list[dict]) -> None:
    import torch

    gpus = torch.cuda.device_count()
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "harness.cli", "train", "train=dmd", "model=self_forcing",
                           "method=autorefiner", "train.steps=10", f"train.devices={gpus}", "train.batch=" + str(gpus),
                           "train.sharding=fsdp", "train.checkpointing=true", "train.precision=mixed",
                           "train.out=/tmp/gpu_check_ar.safetensors"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    plan = subprocess.run([sys.executable, "-m", "harness.cli", "plan", "train=dmd", "model=self_forcing",
                           "method=autorefiner", f"train.devices={gpus}"], capture_output=True, text=True, cwd=ROOT)
    emit(results, {"section": "training", "rc": done.returncode, "seconds": time.perf_counter() - started,
                   "plan": plan.stdout.splitlines()[:1], "output": done.stdout[-1500:] + done.stderr[-1500:]})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--weights", default="weights")
    args = parser.parse_args()
    if not has_gpu():
        print("gpu-check: no NVIDIA GPU on this machine (nvidia-smi finds none); nothing to check here")
        return 0
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    import torch

    results: list[dict] = [{"section": "device", "name": torch.cuda.get_device_name(), "gpus": torch.cuda.device_count(),
                            "torch": torch.__version__}]
    print(json.dumps(results[0]), flush=True)
    for section in (lambda r: sampling("self_forcing", Path(args.weights), r),
                    lambda r: sampling("causvid", Path(args.weights), r), precision, shards, training):
        try:
            section(results)
        except Exception as exc:  # one broken section must not hide the others' figures
            emit(results, {"section": "error", "error": f"{type(exc).__name__}: {exc}"[:1500]})
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"gpu-check: {len(results)} rows written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
