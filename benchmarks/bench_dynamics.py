"""The `dynamics` metric (SSIM and PSNR between frames 5 apart) against a per-frame-pair
scikit-image loop on the same videos: speed-up and the largest difference in value.

    .venv/bin/python benchmarks/bench_dynamics.py [--videos 84] [--repeats 3] [--scale 1]

Videos are the shapes world's renders of the evaluation prompts with a little noise (so no pair is
identical and PSNR stays finite), 32x32, or `--scale` times larger (nearest-neighbour upscaling),
to see how the speed-up carries to larger frames. Target: >= 10x faster, values equal within 1e-4.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.world.grammar import parse  # noqa: E402
from harness.world.prompts import eval_prompts  # noqa: E402
from harness.world.render import render  # noqa: E402
from harness.engine.metric import VideoBatch
from metrics.dynamics import Dynamics  # noqa: E402

INTERVAL = 5


def videos(count: int, scale: int = 1) -> np.ndarray:
    prompts = [p.text for p in eval_prompts()]
    rng = np.random.default_rng(0)
    out = [render(parse(prompts[i % len(prompts)]), i) + rng.normal(0, 0.02, (21, 32, 32, 3)) for i in range(count)]
    batch = np.round(np.clip(np.stack(out), 0, 1) * 255).astype(np.uint8)
    return batch.repeat(scale, axis=2).repeat(scale, axis=3)


def skimage_loop(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ssims, psnrs = [], []
    for video in batch:
        pairs = list(zip(video[:-INTERVAL], video[INTERVAL:]))
        ssims.append(np.mean([structural_similarity(a, b, channel_axis=-1, data_range=255) for a, b in pairs]))
        psnrs.append(np.mean([peak_signal_noise_ratio(a, b, data_range=255) for a, b in pairs]))
    return np.array(ssims), np.array(psnrs)


def vectorised(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    metric = Dynamics(interval=INTERVAL)
    metric.update(VideoBatch(batch, [{}] * len(batch)))
    values = metric.compute()
    return values["ssim"], values["psnr"]


def median_seconds(fn, batch: np.ndarray, repeats: int) -> tuple[float, tuple[np.ndarray, np.ndarray]]:
    fn(batch[:2])  # warm-up: first calls pay one-off allocations and imports, for both
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--videos", type=int, default=84)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=int, default=1)
    args = parser.parse_args()
    batch = videos(args.videos, args.scale)
    loop_s, (loop_ssim, loop_psnr) = median_seconds(skimage_loop, batch, args.repeats)
    fast_s, (fast_ssim, fast_psnr) = median_seconds(vectorised, batch, args.repeats)
    pairs = args.videos * (batch.shape[1] - INTERVAL)
    size = "x".join(map(str, batch.shape[2:4]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.videos} videos of {size}, {pairs} frame pairs")
    print(f"scikit-image loop: {loop_s:.3f} s   dynamics metric: {fast_s:.3f} s   speed-up: {loop_s / fast_s:.1f}x")
    print(f"max |difference|: ssim {np.abs(loop_ssim - fast_ssim).max():.2e}, psnr {np.abs(loop_psnr - fast_psnr).max():.2e} dB")


if __name__ == "__main__":
    main()
