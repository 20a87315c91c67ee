"""`refinery export`: stored videos as one mp4 or animated GIF to watch or share.

Three things can be exported, each read through the store's API (Cell.read_video, Cell.read_record):

- a cell: its videos one after another, in video-index order (prompt-major, seeds within a prompt);
- a sample: one video of a cell, by `video=I` or by `prompt=P` (and `seed=S`, else the cell's first seed);
- a report's gallery (`gallery=true`): a grid of tiles, one row per complete cell of the report (its
  rows, in its order), one column per prompt (`report.gallery` prompts spread over the suite, as the
  HTML report's gallery), each tile that cell's video of the prompt for the first seed; a shorter
  video holds its last frame, a missing one is a grey tile.

Frames are enlarged whole multiples (`scale`, default: to about the HTML report's 128 pixels) so that
each stored pixel stays a sharp square. mp4 is H.264 in yuv420p (plays in browsers and players;
`crf`, 0 the closest to the stored frames); GIF holds one palette, exact where the video has at most
256 colours (media.gif_bytes). The file is written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import UsageError, unknown_name
from harness.report.media import enlarged, gif_bytes
from harness.store.cells import Cell, CellRef, Store
from harness.store.files import atomic_write

FORMATS = ("mp4", "gif")
OPTIONS = ("out", "video", "prompt", "seed", "gallery", "fps", "crf", "scale")
GAP = 4            # pixels between gallery tiles
GAP_GREY = 255     # the gaps' colour (white)
MISSING_GREY = 128  # a gallery tile with no video
TILE_WIDTH = 128   # default scale: whole multiples up to about this width (page.SAMPLE_WIDTH)


@dataclass(frozen=True)
class ExportOptions:
    """The export's own options (OPTIONS); every other override selects cells."""

    out: Path
    video: int | None = None
    prompt: str | None = None
    seed: int | None = None
    gallery: bool = False
    fps: int | None = None  # None: vbench.fps
    crf: int | None = None  # None: vbench.crf
    scale: int | None = None  # None: whole multiples up to about TILE_WIDTH

    @property
    def format(self) -> str:
        return self.out.suffix.lower().lstrip(".")


def split_options(overrides: list[str]) -> tuple[ExportOptions, list[str]]:
    """The export's options (checked) and the other overrides, which Hydra composes. Nothing heavy is
    imported: the command line's errors come before pandas and torch load."""
    own: dict[str, str] = {}
    rest = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key in OPTIONS:
            own[key] = value
        else:
            rest.append(o)
    if not own.get("out"):
        raise UsageError("export needs out=FILE.mp4 or out=FILE.gif, the file to write")
    options = ExportOptions(out=Path(own["out"]).expanduser(), video=_integer(own, "video", 0),
                            prompt=own.get("prompt"), seed=_integer(own, "seed", None),
                            gallery=_flag(own.get("gallery", "false")), fps=_integer(own, "fps", 1),
                            crf=_integer(own, "crf", 0, 51), scale=_integer(own, "scale", 1))
    if options.gallery and (options.video is not None or options.prompt is not None or options.seed is not None):
        raise UsageError("gallery=true shows the report's prompts; drop video=, prompt= and seed=")
    if options.video is not None and (options.prompt is not None or options.seed is not None):
        raise UsageError("choose a sample by video=I or by prompt=P [seed=S], not both")
    if options.seed is not None and options.prompt is None:
        raise UsageError("seed= picks the sample of prompt=P; a cell run with another first seed is "
                         "named with ++seed=N")
    _check_writable(options.out)
    if options.format not in FORMATS:
        raise unknown_name("export format (the suffix of out=)", options.format, FORMATS)
    return options, rest


def _integer(given: dict[str, str], key: str, low: int | None, high: int | None = None) -> int | None:
    if key not in given:
        return None
    try:
        value = int(given[key])
    except ValueError:
        value = None
    if value is None or (low is not None and value < low) or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f">= {low}" if low is not None else ""
        raise UsageError(f"{key}={given[key]} is not an integer {span}".rstrip() + f"; e.g. {key}={low or 0}")
    return value


def _flag(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise UsageError(f"gallery={value} is not true or false")
    return value.lower() == "true"


def _check_writable(out: Path) -> None:
    """Refuse an out= that cannot be written before any video is read: a folder, or a path under a
    file or an unwritable folder."""
    if out.is_dir():
        raise UsageError(f"out={out} is a folder; name a file in it, e.g. out={out / 'export.mp4'}")
    folder = out.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"out={out} cannot be written ({folder} is not a writable folder); choose another path")


# ---------------------------------------------------------------------------------------------
# what is exported


def export_videos(store: Store, refs: list[CellRef], options: ExportOptions, fps: int, crf: int,
                  gallery_prompts: int) -> list[Placed]:
    """Write options.out from the cells of `refs` (one, or a report's rows with gallery=true); what it
    holds, also printed."""
    if options.gallery:
        return _export_gallery(store, refs, options, fps, crf, gallery_prompts)
    if len(refs) != 1:
        names = "; ".join(ref.name() for ref in refs[:4]) + (" ..." if len(refs) > 4 else "")
        raise UsageError(f"the overrides select {len(refs)} cells ({names}); name one with its settings, "
                         "or export them side by side with gallery=true")
    cell = complete_cell(store.cell(refs[0].key), refs[0].name())
    frames, placed = cell_frames(cell, sample_index(cell, options))
    write_export(options.out, enlarged(frames, options.scale or default_scale(frames.shape[2])), fps, crf)
    what = f"video {placed[0].video} ({placed[0].prompt!r}, seed {placed[0].seed})" if len(placed) == 1 \
        else f"{len(placed)} videos one after another"
    print(f"cell {cell.key} ({refs[0].name()}): {what}, {len(frames)} frames at {fps} FPS, written to "
          f"{options.out.resolve()}")
    return placed


def _export_gallery(store: Store, refs: list[CellRef], options: ExportOptions, fps: int, crf: int,
                    prompts: int) -> list[Placed]:
    """The report's complete cells by its gallery's prompts; the others are named and left out."""
    shown = []
    for ref in refs:
        cell = store.cell(ref.key)
        state = cell.state()
        if state == "complete":
            shown.append((cell, ref))
        else:
            print(f"cell {cell.key} ({ref.name()}) is {state}: not in the gallery")
    if not shown:
        raise UsageError("no cell of the report is complete; run the sweep first")
    video, placed, columns = gallery_video([cell for cell, _ in shown], prompts, options.scale)
    write_export(options.out, video, fps, crf)
    print(f"gallery of {len(shown)} cells x {len(columns)} prompts (seed {placed[0].seed}) written to "
          f"{options.out.resolve()}")
    print("\n".join([*(f"  row {i}: {ref.name()} [{cell.key}]" for i, (cell, ref) in enumerate(shown)),
                     *(f"  column {i}: {prompt}" for i, prompt in enumerate(columns))]))
    return placed


@dataclass(frozen=True)
class Placed:
    """One stored video in the export: which, and where (first frame; gallery row and column)."""

    cell: str
    video: int
    prompt: str
    seed: int
    start: int = 0
    row: int = 0
    column: int = 0


def complete_cell(cell: Cell, name: str) -> Cell:
    """The cell, refused with the fix when it is not complete."""
    state = cell.state()
    if state == "missing":
        raise UsageError(f"cell {cell.key} ({name}) is not in the store {cell.path.parent.parent}; run it first "
                         "(`refinery run` or `sweep` with the same overrides), or set paths.store")
    if state != "complete":
        raise UsageError(f"cell {cell.key} ({name}) is {state}; finish it first (`refinery verify` says how)")
    return cell


def sample_index(cell: Cell, options: ExportOptions) -> int | None:
    """The video `video=` or `prompt=`/`seed=` name, None for the whole cell."""
    indices = cell.video_indices()
    if options.video is not None:
        if options.video not in indices:
            raise UsageError(f"cell {cell.key} has no video {options.video}; its videos are 0 to {indices[-1]}")
        return options.video
    if options.prompt is None:
        return None
    records = {i: cell.read_record(i) for i in indices}
    seed = cell.spec()["seeds"][0] if options.seed is None else options.seed
    found = [i for i, r in records.items() if r["prompt"] == options.prompt and r["seed"] == seed]
    if not found:
        prompts = list(dict.fromkeys(r["prompt"] for r in records.values()))
        seeds = sorted({r["seed"] for r in records.values()})
        known = "its seeds are " + ", ".join(map(str, seeds)) if options.prompt in prompts else \
            "its prompts are " + "; ".join(repr(p) for p in prompts[:4]) + (" ..." if len(prompts) > 4 else "")
        raise UsageError(f"cell {cell.key} has no video of prompt={options.prompt!r} seed={seed}; {known}")
    return found[0]


def cell_frames(cell: Cell, index: int | None) -> tuple[np.ndarray, list[Placed]]:
    """One video of the cell, or all of them one after another."""
    indices = cell.video_indices() if index is None else [index]
    videos, placed, start = [], [], 0
    for i in indices:
        video, record = cell.read_video(i), cell.read_record(i)
        if videos and video.shape[1:] != videos[0].shape[1:]:
            raise UsageError(f"{cell.video_path(i)} has frames of another size than video {indices[0]}; rerun the cell")
        videos.append(video)
        placed.append(Placed(cell.key, i, record["prompt"], record["seed"], start))
        start += len(video)
    return np.concatenate(videos), placed


def gallery_video(cells: list[Cell], prompts: int, scale: int | None) -> tuple[np.ndarray, list[Placed], list[str]]:
    """The report's gallery as one video (module docstring), what each tile holds, and the prompts of
    its columns."""
    from harness.report.page import spread

    records = [{i: cell.read_record(i) for i in cell.video_indices()} for cell in cells]
    seed = min(r["seed"] for found in records for r in found.values())
    chosen = spread(list(dict.fromkeys(r["prompt"] for r in records[0].values())), prompts)
    if not chosen:
        raise UsageError(f"report.gallery={prompts} shows no prompt; set it to 1 or more")
    tiles: dict[tuple[int, int], np.ndarray] = {}
    placed = []
    for row, (cell, found) in enumerate(zip(cells, records)):
        by_sample = {(r["prompt"], r["seed"]): i for i, r in sorted(found.items(), reverse=True)}
        for column, prompt in enumerate(chosen):
            index = by_sample.get((prompt, seed))
            if index is not None:
                tiles[row, column] = cell.read_video(index)
                placed.append(Placed(cell.key, index, prompt, seed, 0, row, column))
    sizes = {video.shape[1:] for video in tiles.values()}
    if len(sizes) > 1:
        raise UsageError(f"the report's cells have frames of {len(sizes)} sizes ({', '.join(_size(s) for s in sizes)}); "
                         "a gallery needs one: export the cells apart")
    factor = scale or default_scale(next(iter(sizes))[1])
    video = grid({at: enlarged(v, factor) for at, v in tiles.items()}, len(cells), len(chosen), GAP)
    return video, placed, chosen


def grid(tiles: dict[tuple[int, int], np.ndarray], rows: int, columns: int, gap: int = 0) -> np.ndarray:
    """Videos of one frame size laid out rows x columns, `gap` white pixels apart; a tile with fewer
    frames holds its last one, an absent tile is grey."""
    height, width = next(iter(tiles.values())).shape[1:3]
    frames = max(len(v) for v in tiles.values())
    out = np.full((frames, rows * (height + gap) - gap, columns * (width + gap) - gap, 3), GAP_GREY, np.uint8)
    for row in range(rows):
        for column in range(columns):
            y, x = row * (height + gap), column * (width + gap)
            video = tiles.get((row, column))
            if video is None:
                out[:, y:y + height, x:x + width] = MISSING_GREY
                continue
            out[:, y:y + height, x:x + width] = video[np.minimum(np.arange(frames), len(video) - 1)]
    return out


def _size(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}"


def default_scale(width: int) -> int:
    """Whole multiples up to about TILE_WIDTH pixels: the toy's 32-pixel frames 4x, a real model's 1x."""
    return max(1, TILE_WIDTH // width)


# ---------------------------------------------------------------------------------------------
# writing


def write_export(out: Path, video: np.ndarray, fps: int, crf: int) -> None:
    """The uint8 (F, H, W, 3) video as out's format, written atomically; mp4 padded to an even size
    (yuv420p needs one) with white on the right and bottom."""
    form = out.suffix.lower().lstrip(".")
    try:
        if form == "gif":
            data = gif_bytes(video, round(1000 / fps))
            atomic_write(out, lambda tmp: tmp.write_bytes(data))
        else:
            from harness.vbench.export import write_mp4

            pad = ((0, 0), (0, video.shape[1] % 2), (0, video.shape[2] % 2), (0, 0))
            even = np.pad(video, pad, constant_values=GAP_GREY)
            atomic_write(out, lambda tmp: write_mp4(tmp, even, fps, crf))
    except OSError as e:
        raise UsageError(f"out={out} cannot be written ({e.strerror or e}); choose another path") from None
