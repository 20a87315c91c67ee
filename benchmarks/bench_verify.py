"""`refinery verify` on a store of 500 videos of the toy's size (21 frames of 32x32), in 5 complete
cells of 100 videos with their records, manifests and one score file each.

    .venv/bin/python benchmarks/bench_verify.py [--repeats 5] [--videos 500]

Prints the in-process time of checking every cell (Cell.damage: read, size and sha256 of every file)
and the wall time of the whole `refinery verify paths.store=...` process, medians over the repeats.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.store.cells import Store, cell_key

VIDEO_SHAPE = (21, 32, 32, 3)
PER_CELL = 100


def build(root: Path, videos: int) -> Store:
    store = Store(root)
    rng = np.random.default_rng(0)
    for c in range(videos // PER_CELL):
        spec = {"bench": "verify", "cell": c}
        cell = store.cell(cell_key(spec))
        with cell.lock():
            cell.write_spec(spec)
            for i in range(PER_CELL):
                cell.write_video(i, rng.integers(0, 256, VIDEO_SHAPE, dtype=np.uint8),
                                 {"index": i, "prompt": f"p{i}", "seed": 0, "ledger": {"nfe": 28}})
            cell.write_manifest(PER_CELL)
            cell.set_status("complete")
        cell.write_scores("bench", {"metric": "bench", "version": "1", "higher_is_better": {"v": True},
                                    "values": {"v": list(rng.random(PER_CELL))}, "videos": PER_CELL})
    return store


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--videos", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = build(Path(tmp) / "store", args.videos)
        size = sum(p.stat().st_size for p in store.root.rglob("*") if p.is_file())
        inside, whole = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            damage = [d for cell in store.cells() for d in cell.damage()]
            inside.append(time.perf_counter() - start)
            assert not damage
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "harness.cli", "verify", f"paths.store={store.root}"], cwd=ROOT,
                           check=True, capture_output=True)
            whole.append(time.perf_counter() - start)
    check = statistics.median(inside)
    print(f"store: {args.videos} videos in {args.videos // PER_CELL} cells, {size / 2**20:.1f} MiB")
    print(f"checking every cell (in process): median {check:.3f} s (min {min(inside):.3f}, max {max(inside):.3f}),"
          f" {size / 2**20 / check:.0f} MiB/s, {args.videos / check:.0f} videos/s")
    print(f"`refinery verify` process: median {statistics.median(whole):.2f} s "
          f"(min {min(whole):.2f}, max {max(whole):.2f})")


if __name__ == "__main__":
    main()
