"""Writing a report: report.md, report.csv, paired.csv, report.tex, report.html and the figures, all
built before the first file is written, each written atomically."""
from __future__ import annotations

import re
from pathlib import Path

from harness.report.exports import csv_bytes
from harness.report.figures import cost_quality_figures
from harness.report.latex import report_latex
from harness.report.markdown import markdown
from harness.report.page import report_html
from harness.report.tables import build_report
from harness.store.cells import CellRef, Store
from harness.store.files import atomic_write_bytes, sha256_hex
from harness.store.lease import remove_stale_temp_files


def write_report(store: Store, refs: list[CellRef], out_dir: Path, title: str, **options) -> dict[str, Path]:
    """Build the report (build_report's options, and `latex`: a paper layout for report.tex,
    `gallery_prompts`: how many prompts the sample gallery shows) and write report.md, report.csv,
    paired.csv, report.tex, report.html and figure-<metric>.png; nothing is written when any input is
    bad. The temp files that a killed report writer left in the folder are removed."""
    latex_layout = options.pop("latex", None)
    gallery_prompts = options.pop("gallery_prompts", 4)
    report = build_report(store, refs, title, **options)
    figures = cost_quality_figures(report)
    files = {"report.md": markdown(report, figures).encode(),
             "report.csv": csv_bytes(report.summary.drop(columns=["higher_is_better"])),
             "paired.csv": csv_bytes(report.paired),
             "report.tex": report_latex(report, latex_layout).encode(),
             "report.html": report_html(report, store, figures, gallery_prompts).encode(),
             **{f.file: f.png for f in figures}}
    out_dir = Path(out_dir)
    remove_stale_temp_files(out_dir)  # of a report writer killed mid-write
    for stale in out_dir.glob("figure*.png"):  # figures of an earlier report would not match the tables
        if stale.name not in files:
            stale.unlink()
    for name, data in files.items():
        atomic_write_bytes(out_dir / name, data)
    return {name: out_dir / name for name in files}


def report_folder(root: Path, name: str, overrides: list[str]) -> Path:
    """reports/<name>/ for the experiment alone; with any other override, a folder of its own named by
    the overrides and a digest of them, so that two reports of one experiment never overwrite each other."""
    # sorted: the same overrides in another order name the same report
    extra = sorted(o for o in overrides if o.lstrip("+~").partition("=")[0] not in ("experiment", "paths.reports"))
    if not extra:
        return Path(root) / name
    slug = re.sub(r"[^A-Za-z0-9._=,-]+", "_", "+".join(extra)).strip("_")[:60]
    return Path(root) / f"{name}@{slug}-{sha256_hex(chr(0).join(extra))[:8]}"
