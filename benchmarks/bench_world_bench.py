"""world_bench throughput: videos per second that WorldBench.score gets through, and the oracle's
own reading time per video (`read_video`, which world_alignment and world_bench both call).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_world_bench.py [--seeds 2] [--workers 1] [--repeats 3]

The videos are the 42 evaluation prompts x seeds rendered, and a noisy copy of each (Gaussian pixel
noise, sigma 0.05: generated videos are noisier than renders, and noise costs the oracle more
components). Rendering happens before the clock starts; the figure is scoring only, median of the
repeats. The suite is single-threaded numpy, so more cores help by scoring videos side by side:
--workers N splits the videos among N forked processes (started and warmed before timing), as a
sweep's joblib launcher scores cells in parallel. The 2-core figure is --workers 2 on idle cores.
"""
from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.world.grammar import parse  # noqa: E402
from harness.world.oracle import read_video  # noqa: E402
from harness.world.prompts import eval_prompts  # noqa: E402
from harness.world.render import render  # noqa: E402
from harness.engine.metric import VideoBatch
from metrics.world_bench import WorldBench  # noqa: E402

NOISE_SIGMA = 0.05
_VIDEOS: np.ndarray | None = None  # set before forking, so workers share it instead of pickling it
_RECORDS: list[dict] = []


def videos(seeds: int) -> tuple[np.ndarray, list[dict]]:
    items = [(p.text, s) for p in eval_prompts() for s in range(seeds)]
    clean = np.stack([render(parse(t), s) for t, s in items])
    noisy = clean + np.random.default_rng(0).normal(0.0, NOISE_SIGMA, clean.shape)
    both = np.concatenate([clean, noisy])
    records = [{"prompt": t, "seed": s} for t, s in items] * 2
    return np.round(np.clip(both, 0.0, 1.0) * 255).astype(np.uint8), records


def score_slice(bounds: tuple[int, int]) -> int:
    start, stop = bounds
    WorldBench().score(VideoBatch(_VIDEOS[start:stop], _RECORDS[start:stop]))
    return stop - start


def main() -> None:
    global _VIDEOS, _RECORDS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    _VIDEOS, _RECORDS = videos(args.seeds)
    n = len(_VIDEOS)
    edges = np.linspace(0, n, args.workers + 1).astype(int)
    shards = list(zip(edges[:-1].tolist(), edges[1:].tolist()))
    times = []
    with multiprocessing.get_context("fork").Pool(args.workers) as pool:
        pool.map(score_slice, [(0, 1)] * args.workers)  # imports and first calls, off the clock
        for _ in range(args.repeats):
            start = time.perf_counter()
            done = sum(pool.map(score_slice, shards))
            times.append(time.perf_counter() - start)
    wall = statistics.median(times)
    read_video(_VIDEOS[0])  # first call off the clock
    start = time.perf_counter()
    for video in _VIDEOS[: n // 2]:
        read_video(video)
    print(f"oracle: {1000 * (time.perf_counter() - start) / (n // 2):.1f} ms per rendered video (one process)")
    print(f"world_bench: {done} videos ({n // 2} rendered + {n // 2} noisy, 21x32x32) in {wall:.2f} s "
          f"(median of {args.repeats}) with {args.workers} worker(s): {done / wall:.1f} videos/s")


if __name__ == "__main__":
    main()
