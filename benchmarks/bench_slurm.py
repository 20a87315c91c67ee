"""SLURM sweeps on the test suite's one-node cluster (tests/slurm_cluster.py): how long the cluster
takes to start, and the quickstart sweep through hydra/launcher=slurm against the basic launcher.

    .venv/bin/python benchmarks/bench_slurm.py [--starts 5] [--repeats 2]

The cluster start is timed from munged's start to an idle node. The sweeps alternate (basic, SLURM,
basic, ...), each into a fresh store. Both run threads=1, so that their cells have the same keys
(their stores are checked to hold the same videos) and the node's 2 CPUs run 2 array tasks at once,
while the basic launcher runs one cell after another; the default basic sweep (threads=2, one cell at
a time with both cores) is timed beside them.
"""
from __future__ import annotations

import argparse
import filecmp
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from slurm_cluster import SlurmCluster, missing_programs  # noqa: E402

VARIANTS = {
    "basic, threads=1": ["threads=1"],
    "slurm, threads=1 (2 array tasks at once)": ["threads=1", "hydra/launcher=slurm", "hydra.launcher.partition=debug"],
    "basic, threads=2 (the default)": [],
}


def starts(folder: Path, count: int) -> list[float]:
    seconds = []
    for i in range(count):
        cluster = SlurmCluster.start(folder / f"start{i}")
        seconds.append(cluster.started_s)
        cluster.stop()
    return seconds


def sweep(env: dict, store: Path, overrides: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", "experiment=quickstart", *overrides,
                          f"paths.store={store}"], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    logs = "".join(p.read_text() for p in store.glob(".sweeps/*/.submitit/*/*_log.out")) + out.stdout
    return wall, sum(int(v) for v in re.findall(r"(\d+) videos generated", logs))


def same_videos(a: Path, b: Path) -> bool:
    videos = sorted(p.relative_to(a) for p in a.glob("cells/*/videos/*.npy"))
    return videos == sorted(p.relative_to(b) for p in b.glob("cells/*/videos/*.npy")) and \
        all(filecmp.cmp(a / v, b / v, shallow=False) for v in videos)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if missing_programs():
        sys.exit(f"needs slurm-wlm and munge (missing: {', '.join(missing_programs())})")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        up = starts(tmp, args.starts)
        print(f"cluster start to an idle node: median {statistics.median(up):.2f} s "
              f"(min {min(up):.2f}, max {max(up):.2f}, {args.starts} starts)")
        cluster = SlurmCluster.start(tmp / "cluster")
        try:
            times = {name: [] for name in VARIANTS}
            for r in range(args.repeats):
                for i, (name, overrides) in enumerate(VARIANTS.items()):
                    store = tmp / f"store-{r}-{i}"
                    wall, videos = sweep({**os.environ, **cluster.env}, store, overrides)
                    times[name].append((wall, videos, store))
                    print(f"  run {r + 1}: {name}: {wall:.1f} s, {videos} videos", flush=True)
        finally:
            cluster.stop()
        basic, slurm = times["basic, threads=1"], times["slurm, threads=1 (2 array tasks at once)"]
        print("same videos, SLURM and basic:", all(same_videos(b[2], s[2]) for b, s in zip(basic, slurm)))
        for name, runs in times.items():
            wall = statistics.median(w for w, _, _ in runs)
            print(f"{name}: median {wall:.1f} s, {runs[0][1] / wall:.1f} videos/s "
                  f"(runs: {', '.join(f'{w:.1f}' for w, _, _ in runs)} s)")
        ratios = [b[0] / s[0] for b, s in zip(basic, slurm)]
        print(f"basic / slurm wall time, pair by pair: {', '.join(f'{x:.2f}' for x in ratios)}")


if __name__ == "__main__":
    main()
