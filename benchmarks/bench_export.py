"""How close `refinery export`'s files are to the stored frames: every video of one cell written as GIF
and as mp4 (H.264 yuv420p) at several enlargements and crf values, read back with imageio, PSNR
against the stored frames (on the enlarged file's every `scale`-th pixel).

    .venv/bin/python benchmarks/bench_export.py STORE CELL_KEY
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness.report.export import write_export
from harness.report.media import enlarged
from harness.store.cells import Store

SETTINGS = [("gif", 1, 0), ("mp4", 1, 0), ("mp4", 2, 0), ("mp4", 4, 0), ("mp4", 4, 17)]  # format, scale, crf


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255 ** 2 / mse))


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("store")
    args.add_argument("cell")
    options = args.parse_args()
    cell = Store(options.store).cell(options.cell)
    found: dict[str, list[float]] = {"colours": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in cell.video_indices():
            video = cell.read_video(i)
            found["colours"].append(len(np.unique(video.reshape(-1, 3), axis=0)))
            for form, scale, crf in SETTINGS:
                out = Path(tmp) / f"video.{form}"
                write_export(out, enlarged(video, scale), 16, crf)
                back = iio.imread(out, index=None, **({"plugin": "FFMPEG"} if form == "mp4" else {}))[..., :3]
                found.setdefault(f"{form} scale={scale} crf={crf} (dB)", []).append(psnr(back[:, ::scale, ::scale], video))
    print(f"{len(found['colours'])} videos of cell {options.cell}")
    for name, values in found.items():
        print(f"  {name}: min {min(values):.1f}, median {np.median(values):.1f}, max {max(values):.1f}")


if __name__ == "__main__":
    main()
