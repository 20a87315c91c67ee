"""A cell's videos as mp4 files that VBench reads as they are, on this machine or any other.

Two modes, named as VBench names them:

- vbench_standard: the cell's prompts come from VBench's prompt suite (VBench_full_info.json);
  each video is `{prompt}-{i}.mp4`, i being its seed's position among the cell's seeds (VBench reads
  i = 0..4), the names VBench's standard evaluation looks for. All 16 dimensions are valid.
- custom_input: any prompts; each video is `{index:05d}.mp4` and prompts.json maps file name to
  prompt (VBench's --prompt_file). Valid dimensions: scores.CUSTOM_DIMENSIONS.

One folder per cell, written under a temporary name and renamed when complete:

    OUT/<cell key>/videos/       the mp4 files and nothing else (VBench takes every file's suffix
                                 from the first file it lists)
    OUT/<cell key>/prompts.json  custom_input only
    OUT/<cell key>/export.json   the cell key, the mode, and {video index: file name} for ingest
    OUT/<cell key>/results/      written later by `refinery vbench evaluate`
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import UsageError
from harness.store.files import atomic_folder, atomic_write_json, read_json
from harness.store.cells import Cell
from harness.store.video_format import ffmpeg
from harness.vbench.scores import CUSTOM, check_mode, read_full_info

SAMPLES_PER_PROMPT = 5  # VBench's standard evaluation reads {prompt}-0 .. {prompt}-4
MANIFEST, PROMPT_FILE, VIDEO_DIR, RESULT_DIR = "export.json", "prompts.json", "videos", "results"


@dataclass(frozen=True)
class Export:
    """An export folder as export.json describes it."""

    path: Path
    cell: str
    mode: str
    videos: dict[int, str]  # video index -> file name under videos/ (duplicate prompts share one)

    @property
    def video_dir(self) -> Path:
        return self.path / VIDEO_DIR

    @property
    def prompt_file(self) -> Path:
        return self.path / PROMPT_FILE

    @property
    def result_dir(self) -> Path:
        return self.path / RESULT_DIR


def read_export(path: Path) -> Export:
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        raise UsageError(f"{path} is not a VBench export (no {MANIFEST}); make one with "
                         "`refinery vbench export OUT ...` and pass OUT/<cell key>")
    data = read_json(manifest)
    try:
        return Export(Path(path), data["cell"], data["mode"], {int(i): f for i, f in data["videos"].items()})
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UsageError(f"{manifest} is corrupt ({e!r}); export the cell again") from None


def export_cell(cell: Cell, out: Path, mode: str, fps: int, crf: int,
                full_info: Path | None = None) -> Export:
    """Write OUT/<cell key>/ for a complete cell; a failure leaves nothing behind."""
    check_mode(mode)
    if not isinstance(fps, int) or fps < 1:
        raise UsageError(f"vbench.fps={fps} is out of range; use an integer >= 1")
    if not isinstance(crf, int) or not 0 <= crf <= 51:
        raise UsageError(f"vbench.crf={crf} is out of range; use an integer from 0 (lossless luma) to 51")
    if not cell.is_complete():
        raise UsageError(f"cell {cell.key} is not complete; run `refinery run` (or sweep) for it first")
    target = Path(out) / cell.key
    if target.exists():
        raise UsageError(f"{target} already exists; delete it or export to another folder")
    records = {i: cell.read_record(i) for i in cell.video_indices()}
    names = _names(records, cell.spec()["seeds"], mode, full_info)
    with atomic_folder(target) as tmp:
        _write_videos(cell, names, tmp / VIDEO_DIR, fps, crf)
        if mode == CUSTOM:
            atomic_write_json(tmp / PROMPT_FILE, {names[i]: records[i]["prompt"] for i in names})
        atomic_write_json(tmp / MANIFEST, {"cell": cell.key, "mode": mode, "fps": fps, "crf": crf,
                                           "videos": {str(i): f for i, f in names.items()}})
    return read_export(target)


def _names(records: dict[int, dict], seeds: list[int], mode: str, full_info: Path | None) -> dict[int, str]:
    if mode == CUSTOM:
        # prompts may hold '/' or exceed a file name's 255 bytes; indices never do
        return {i: f"{i:05d}.mp4" for i in records}
    if full_info is None:
        raise UsageError("vbench_standard needs VBench's prompt suite: set vbench.full_info to "
                         "VBench_full_info.json (inside the vbench package), or use vbench.mode=custom_input")
    suite = {prompt for prompt, _ in read_full_info(full_info)}
    if len(seeds) > SAMPLES_PER_PROMPT:
        raise UsageError(f"the cell has {len(seeds)} samples per prompt but VBench reads "
                         f"{SAMPLES_PER_PROMPT}; run it with samples_per_prompt={SAMPLES_PER_PROMPT}")
    names = {}
    for i, record in records.items():
        prompt = record["prompt"]
        if prompt not in suite:
            raise UsageError(f"prompt {prompt!r} is not in VBench's prompt suite ({full_info}); export with "
                             "vbench.mode=custom_input, which takes any prompts")
        # a prompt listed twice in the suite gives the same name: both videos map to the first one
        names[i] = f"{prompt}-{seeds.index(record['seed'])}.mp4"
    return names


def _write_videos(cell: Cell, names: dict[int, str], folder: Path, fps: int, crf: int) -> None:
    folder.mkdir(parents=True)
    first: tuple[int, tuple[int, ...]] | None = None
    for i, name in names.items():
        if (folder / name).exists():
            continue
        video = _read(cell, i)
        if first is None:
            first = (i, video.shape[1:3])
            _check_even(cell, i, video)
        elif video.shape[1:3] != first[1]:
            raise UsageError(f"{cell.video_path(i)} has frames of {_size(video.shape[1:3])} but video "
                             f"{first[0]} of the cell has {_size(first[1])}; one export needs one frame "
                             "size: rerun the cell")
        write_mp4(folder / name, video, fps, crf)


def _read(cell: Cell, i: int) -> np.ndarray:
    try:
        video = cell.read_video(i)
    except OSError as e:
        raise UsageError(f"{e.filename or cell.path} is unreadable ({e.strerror}); rerun the cell") from None
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise UsageError(f"{cell.video_path(i)} is not a uint8 (frames, height, width, 3) video "
                         f"({video.dtype} {video.shape}); rerun the cell")
    return video


def _check_even(cell: Cell, i: int, video: np.ndarray) -> None:
    if video.shape[1] % 2 or video.shape[2] % 2:
        raise UsageError(f"{cell.video_path(i)} has frames of {_size(video.shape[1:3])}; H.264 (yuv420p), "
                         "which VBench's readers expect, needs an even width and height")


def _size(hw: tuple[int, ...]) -> str:
    return f"{hw[1]}x{hw[0]}"


def write_mp4(path: Path, video: np.ndarray, fps: int, crf: int) -> None:
    """uint8 (F, H, W, 3) -> H.264 yuv420p mp4, the format VBench's readers (decord, OpenCV) expect
    (mp4 whatever the path's suffix: atomic writes go to a temp name)."""
    writer = ffmpeg().write_frames(
        str(path), (video.shape[2], video.shape[1]), fps=fps, codec="libx264", quality=None,
        pix_fmt_in="rgb24", pix_fmt_out="yuv420p", output_params=["-crf", str(crf), "-f", "mp4"],
        macro_block_size=1, ffmpeg_log_level="error")
    writer.send(None)
    for frame in video:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def vbench_cli(export: Export, dimensions: list[str], full_info: Path | None) -> str:
    """VBench's own command line for an export, for machines without Refinery."""
    # VBench's CLI takes --dimension as one string and re-splits it through a shell
    words = ["vbench", "evaluate", "--videos_path", str(export.video_dir), "--dimension", " ".join(dimensions),
             "--mode", export.mode, "--load_ckpt_from_local", "True", "--output_path", str(export.result_dir)]
    if export.mode == CUSTOM:
        words += ["--prompt_file", str(export.prompt_file)]
    elif full_info is not None:
        words += ["--full_json_dir", str(full_info)]
    return shlex.join(words)
