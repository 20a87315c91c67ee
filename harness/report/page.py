"""The HTML report: one self-contained file (figures and samples inlined as data: URIs, no external
request), rendered from the jinja2 templates in reports/templates/ with autoescape on, so that every
prompt- or config-derived string is shown as text.

Besides the tables it carries the run's metadata (date, git commit, Refinery version, model and weight
digests, each cell's frozen spec), a sample gallery (for a few prompts, the same seed side by side
across cells as animated GIFs with their frame strips below) and a per-prompt drill-down of the
headline scores.
"""
from __future__ import annotations

import base64
import io
import json
import math
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.assets import CHECKOUT, TEMPLATES
from harness.report.media import gif_bytes

if TYPE_CHECKING:
    import jinja2

    from harness.store.cells import CellRef
    from harness.report.tables import ReportData
    from harness.report.figures import Figure
    from harness.store.cells import Store

SAMPLE_WIDTH = 128  # pixels of a gallery animation: the toy's 32-pixel frames are scaled up 4x, a real
STRIP_WIDTH = 64   # model's 832-pixel frames down; each frame of the strip
STRIP_FRAMES = 7
GIF_FRAME_MS = 125


@lru_cache(maxsize=1)
def environment() -> "jinja2.Environment":
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


# -- metadata -------------------------------------------------------------------------------------

def run_metadata() -> dict[str, str]:
    """Date, git commit of the Refinery source tree, and Refinery's version."""
    from harness import __version__

    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(),
            "refinery": __version__}


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(CHECKOUT), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return commit + (" with uncommitted changes" if dirty else "")


def digests(spec: dict | None, path: str = "") -> list[tuple[str, str]]:
    """Every weight digest a spec records (model, checkpoints, verifiers), with where it sits."""
    if not isinstance(spec, dict):
        return []
    found = []
    for key, value in spec.items():
        where = f"{path}.{key}" if path else key
        if isinstance(value, dict):
            found += digests(value, where)
        elif key == "digest" or key.endswith("_digest"):
            name = spec.get("name") if key == "digest" else None
            found.append((f"{where} ({name})" if name else where, str(value)))
    return found


def cell_details(report: "ReportData", store: "Store") -> list[dict[str, Any]]:
    """Each cell's frozen spec, status and generation timings (metadata: measured under whatever load
    the machine had, so never compared)."""
    df = report.df
    out = []
    for ref in report.refs:
        cell = store.cell(ref.key)
        spec, status = cell.spec(), cell.status() or {}
        rows = df[df["cell"] == ref.key]
        timing = {m.split(".", 1)[1]: float(np.nanmedian(v)) for m, v in
                  rows.groupby("metric")["value"] if m in ("compute.wall_seconds", "compute.fps") and len(v)}
        out.append({"name": ref.name(report.label_keys), "key": ref.key, "state": report.context.states[ref.key],
                    "status": status, "digests": digests(spec), "generation": timing,
                    "spec": json.dumps(spec, indent=1, sort_keys=True, ensure_ascii=False) if spec else "no spec yet"})
    return out


# -- media ----------------------------------------------------------------------------------------

def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _scaled(image, width: int):
    """The image at about `width` pixels: whole multiples up (pixels stay sharp), area-averaged down."""
    from PIL import Image

    if image.width <= width:
        factor = max(1, width // image.width)
        return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    return image.resize((width, max(1, round(image.height * width / image.width))), Image.Resampling.BOX)


def animation(video: np.ndarray, width: int = SAMPLE_WIDTH) -> bytes:
    """An animated GIF of a (F, H, W, 3) uint8 video at about `width` pixels, looping: wider frames are
    area-averaged down first (the palette is taken where the frames are smallest), narrower ones
    enlarged whole multiples (media.gif_bytes)."""
    from PIL import Image

    if video.shape[2] > width:
        video = np.stack([np.asarray(_scaled(Image.fromarray(f), width)) for f in video])
    return gif_bytes(video, GIF_FRAME_MS, max(1, width // video.shape[2]))


def frame_strip(video: np.ndarray, count: int = STRIP_FRAMES, width: int = STRIP_WIDTH) -> tuple[bytes, list[int]]:
    """A PNG of `count` evenly spaced frames side by side, and which frames they are."""
    from PIL import Image

    picks = sorted(set(np.linspace(0, len(video) - 1, min(count, len(video))).round().astype(int).tolist()))
    tiles = [_scaled(Image.fromarray(video[i]), width) for i in picks]
    gap = 2
    strip = Image.new("RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1), tiles[0].height), "white")
    x = 0
    for tile in tiles:
        strip.paste(tile, (x, 0))
        x += tile.width + gap
    buf = io.BytesIO()
    strip.save(buf, format="PNG", optimize=True)
    return buf.getvalue(), picks


@dataclass
class Tile:
    name: str
    animation: str  # data: URI
    strip: str
    strip_frames: str
    scores: list[tuple[str, str]]


def gallery(report: "ReportData", store: "Store", prompts: int, seed_position: int = 0) -> list[dict[str, Any]]:
    """For `prompts` prompts spread over the first section's suite: its video of the first seed in
    every complete cell, side by side."""
    section = report.sections[0] if report.sections else None
    refs = [r for r in (section.refs if section else []) if report.context.states[r.key] == "complete"]
    videos = report.df.dropna(subset=["video"]).drop_duplicates(["cell", "video"])
    if not refs or videos.empty or prompts <= 0:
        return []
    order = list(dict.fromkeys(videos["prompt"]))
    seeds = sorted(videos["seed"].dropna().unique())
    seed = seeds[min(seed_position, len(seeds) - 1)]
    chosen = spread(order, prompts)
    by_key = {(r["cell"], r["prompt"], r["seed"]): int(r["video"]) for r in videos.to_dict("records")}
    values = {(r["cell"], r["video"], r["metric"]): r["value"] for r in report.df.to_dict("records")}
    shown = []
    for prompt in chosen:
        tiles = []
        for ref in refs:
            index = by_key.get((ref.key, prompt, seed))
            if index is None:
                continue
            video = store.cell(ref.key).read_video(index)
            strip, picks = frame_strip(video)
            scores = [(m.split(".", 1)[-1], _fmt(values.get((ref.key, index, m)))) for m in report.headline]
            tiles.append(Tile(ref.name(report.label_keys), data_uri(animation(video), "image/gif"),
                              data_uri(strip, "image/png"), ", ".join(map(str, picks)), scores))
        shown.append({"prompt": prompt, "seed": seed, "tiles": tiles})
    return shown


def spread(items: list, count: int) -> list:
    """`count` of the items evenly spread from the first to the last, in their order (the gallery's
    prompts, here and in `refinery export gallery=true`)."""
    if count <= 0 or not items:
        return []
    return [items[i] for i in sorted(set(np.linspace(0, len(items) - 1, min(count, len(items))).round().astype(int)))]


def _fmt(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.3f}"


def drilldown(report: "ReportData") -> list[dict[str, Any]]:
    """Per prompt of the first section: every complete cell's headline scores, seed by seed, and the
    prompt's mean Δ against the baseline."""
    section = report.sections[0] if report.sections else None
    if section is None:
        return []
    complete = [r for r in section.refs if report.context.states[r.key] == "complete"]
    rows = report.df[report.df["metric"].isin(report.headline) & report.df["cell"].isin([r.key for r in complete])]
    wide = rows.pivot_table(index=["prompt", "seed", "cell"], columns="metric", values="value", dropna=False)
    names = {r.key: r.name(report.label_keys) for r in complete}
    out = []
    for prompt in dict.fromkeys(rows["prompt"]):
        part = wide.loc[prompt]
        lines = [{"cell": names[cell], "seed": int(seed),
                  "values": [_fmt(part.loc[(seed, cell)].get(m)) for m in report.headline]}
                 for cell in names for seed in sorted(part.index.get_level_values(0).unique())
                 if (seed, cell) in part.index]
        means = part.groupby(level=1).mean()[report.headline[0]]
        out.append({"prompt": prompt, "rows": lines, "deltas": _prompt_deltas(report, part, names),
                    "means": [_fmt(means.get(cell)) for cell in names]})
    return out


def prompt_columns(report: "ReportData") -> list[str]:
    """The cells of the per-prompt overview, in drilldown's order."""
    section = report.sections[0] if report.sections else None
    return [r.name(report.label_keys) for r in (section.refs if section else [])
            if report.context.states[r.key] == "complete"]


def _prompt_deltas(report: "ReportData", part, names: dict[str, str]) -> list[str]:
    """The prompt's mean headline scores per cell minus the baseline's, as text."""
    base = section_baseline(report)
    if base is None or base not in part.index.get_level_values(1):
        return []
    means = part.groupby(level=1).mean()
    texts = []
    for metric in report.headline:
        best = means[metric].drop(base, errors="ignore") - means.loc[base, metric]
        if best.notna().any():
            cell = best.idxmax() if report.context.better.get(metric) is not False else best.idxmin()
            texts.append(f"{metric}: largest Δ {best[cell]:+.3f} ({names[cell]})")
    return texts


def section_baseline(report: "ReportData") -> str | None:
    return report.sections[0].baseline if report.sections else None


# -- pages ----------------------------------------------------------------------------------------

def report_html(report: "ReportData", store: "Store", figures: list["Figure"], gallery_prompts: int = 4) -> str:
    from harness.report.timing import timing_note

    cells = cell_details(report, store)
    weights = sorted({pair for c in cells for pair in c["digests"]})
    return render("report.html.j2", title=report.title, stats=report.resampling.describe(), notes=report.notes,
                  timing=timing_note(report.timings) if report.timings else None, meta=run_metadata(), weights=weights,
                  sections=report.sections, figures=[(f.caption, data_uri(f.png, "image/png")) for f in figures],
                  gallery=gallery(report, store, gallery_prompts), headline=report.headline,
                  drilldown=drilldown(report), prompt_columns=prompt_columns(report), cells=cells)

