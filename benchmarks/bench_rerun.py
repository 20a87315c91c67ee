"""(c) The quickstart sweep from an empty store, then its rerun: the rerun must make zero model calls.

    .venv/bin/python benchmarks/bench_rerun.py

Prints both wall times and the model calls each cell reported.
"""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sweep(store: Path) -> tuple[float, list[tuple[int, int]]]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", "experiment=quickstart",
                          f"paths.store={store}"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    calls = [(int(v), int(c)) for v, c in re.findall(r"(\d+) videos generated \((\d+) model calls\)", out)]
    return time.perf_counter() - start, calls


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        first, first_calls = sweep(store)
        again, again_calls = sweep(store)
    print(f"first sweep: {first:.1f} s, {len(first_calls)} cells, "
          f"{sum(v for v, _ in first_calls)} videos, {sum(c for _, c in first_calls)} model calls")
    print(f"rerun:       {again:.1f} s, {len(again_calls)} cells, "
          f"{sum(v for v, _ in again_calls)} videos, {sum(c for _, c in again_calls)} model calls")


if __name__ == "__main__":
    main()
