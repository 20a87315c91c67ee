"""A rerun and a report over a 1,000-video store: before (every byte of a complete cell hashed) and after
(size and modification time; the hash is `refinery verify`'s).

    .venv/bin/python benchmarks/bench_store_checks.py --before <commit> [--repeats 3]

Exports <commit>'s code (git archive) beside this checkout's, fills one store with each (the toy,
suite=world_smoke x 250 seeds = 1,000 videos in one cell, 2 chunks and 2 steps (6 frames of 32x32), stored as npy), then times `refinery run`
(the rerun: 0 videos generated) and `refinery report` of that cell with each code on its own store,
alternating before and after. Prints the medians and their ratio.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CELL = ["suite=world_smoke", "samples_per_prompt=250", "batch_size=50", "model.num_chunks=2", "sampler.steps=2", "~metric.world_bench",
        "~metric.world_alignment", "report.metrics=[temporal_flicker,dynamics]", "report.headline=[dynamics.ssim]"]


def refinery(code: Path, command: str, store: Path, reports: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "harness.cli", command, *CELL, f"paths.store={store}",
                    f"paths.reports={reports}"], cwd=code, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, help="the commit whose checks to compare against")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        before = tmp / "before"
        before.mkdir()
        archive = subprocess.run(["git", "archive", args.before], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
        codes = {"before": before, "after": ROOT}
        for name, code in codes.items():  # the first run: generates and scores 1,000 videos
            seconds = refinery(code, "run", tmp / f"store-{name}", tmp / f"reports-{name}")
            videos = len(list((tmp / f"store-{name}").glob("cells/*/videos/*")))
            print(f"{name}: first run {seconds:.1f} s, {videos} videos stored", flush=True)
        for command in ("run", "report"):
            times: dict[str, list[float]] = {name: [] for name in codes}
            for _ in range(args.repeats):
                for name, code in codes.items():
                    times[name].append(refinery(code, command, tmp / f"store-{name}", tmp / f"reports-{name}"))
            medians = {name: statistics.median(t) for name, t in times.items()}
            print(f"{command}: before {medians['before']:.2f} s {times['before']}, after {medians['after']:.2f} s "
                  f"{times['after']}, after / before = {medians['after'] / medians['before']:.3f}", flush=True)


if __name__ == "__main__":
    main()
