"""`refinery leaderboard`: methods (and models) ranked on one frozen suite, across experiments and stores.

Cells are ranked only when they are comparable: one suite (name, version and prompts), one list of
seeds, and one set of weights per model name; anything else is refused with the cells named. Each row
has its mean with the prompt-clustered CI, the paired Δ against the named baseline (Holm-corrected
across the rows), its rank by the first leaderboard metric with a bootstrap rank interval (every draw
resamples the same prompts for all rows and ranks their means) and the compute columns. Written as
leaderboard.md, .csv, .html and .tex.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from harness.errors import UsageError
from harness.report.exports import csv_bytes
from harness.report.markdown import markdown_table
from harness.report.tables import OVERHEAD, TIMING, build_report, metric_title, paired_entry
from harness.store.cells import CellRef
from harness.report.tables import Column, Entry, ReportData, Row, Table
from harness.report.timing import timing_note
from harness.report.latex import booktabs, latex_entry
from harness.report.stats import rank_intervals
from harness.store.files import atomic_write_bytes, canonical_json
from harness.store.cells import Cell, Store
from harness.store.lease import remove_stale_temp_files

_COMPARED = ("suite.name", "suite.version", "suite.prompts", "seeds")


class Stores:
    """Several stores read as one: a cell comes from the first store that holds it complete, else from
    the first that holds it at all."""

    def __init__(self, stores: list[Store]):
        self.stores = stores

    @property
    def roots(self) -> list[Path]:
        return [s.root for s in self.stores]

    def cell(self, key: str) -> Cell:
        cells = [s.cell(key) for s in self.stores]
        return next((c for c in cells if c.is_complete()), next((c for c in cells if c.spec()), cells[0]))


def _field(spec: dict, path: str):
    value = spec
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def check_comparable(stores: Stores, refs: list[CellRef]) -> None:
    """Refuse, naming the cells, a ranking of cells with another suite, prompts or seeds, or of one
    model name with two weight digests."""
    names = {r.key: r.name() for r in refs}
    specs = {r.key: stores.cell(r.key).spec() for r in refs if stores.cell(r.key).is_complete()}
    if not specs:
        return
    first = next(iter(specs))
    for path in _COMPARED:
        other = next((k for k, s in specs.items() if _field(s, path) != _field(specs[first], path)), None)
        if other is not None:
            raise UsageError(
                f"cannot rank {names[other]} [{other}] with {names[first]} [{first}]: their {path} differ "
                f"({_short(_field(specs[other], path))} vs {_short(_field(specs[first], path))}); rank cells of one "
                "frozen suite and seeds (drop that experiment, or regenerate it with the same suite and seeds)")
    digests: dict[str, dict[str, str]] = {}
    for key, spec in specs.items():
        digests.setdefault(spec["model"]["name"], {}).setdefault(spec["model"]["digest"], key)
    for model, cells in digests.items():
        if len(cells) > 1:
            listed = "; ".join(f"{names[k]} [{k}] digest {d}" for d, k in cells.items())
            raise UsageError(f"cannot rank model {model!r} with {len(cells)} weight digests ({listed}); "
                             "regenerate the stale cells (`refinery sweep`) so that one model name means one set of weights")


def _short(value: object) -> str:
    text = canonical_json(value)
    return text if len(text) <= 40 else text[:37] + "..."


def build_leaderboard(stores: Stores, refs: list[CellRef], title: str, metrics: list[str], baseline: str,
                      **options) -> tuple[ReportData, Table]:
    """The report of the ranked cells (build_report's options) and the leaderboard table."""
    check_comparable(stores, refs)
    report = build_report(stores, refs, title, metrics=["overhead", *metrics], headline=metrics,
                          baseline=baseline, **options)
    ctx = report.context
    primary = metrics[0]
    complete = [r for r in refs if ctx.states[r.key] == "complete" and ctx.scores.has(r.key, primary)]
    if len(complete) < 2:
        raise UsageError(f"a leaderboard needs at least two complete cells scored with {primary}; "
                         f"{len(complete)} found: run the experiments' sweeps first")
    ranks = dict(zip([r.key for r in complete], rank_intervals(
        *_aligned(ctx.scores, [r.key for r in complete], primary), ctx.better.get(primary) is not False,
        report.resampling)))
    order = sorted(refs, key=lambda r: (ranks[r.key].rank if r.key in ranks else math.inf,
                                        r.name(report.label_keys)))
    cost = [m for m in [*OVERHEAD, *TIMING] if m in set(report.summary["metric"])]
    quality = report.table(order, metrics, "scores")
    costs = report.table(order, cost, "cost")
    columns = [Column("rank", "rank [95% interval]", "rank"), *quality.columns,
               *[Column(m, f"Δ {metric_title(m, ctx.better.get(m), True)}", "Δ against the baseline",
                        f"Δ {metric_title(m, ctx.better.get(m))}") for m in metrics], *costs.columns]
    rows = []
    for ref, q, c in zip(order, quality.rows, costs.rows):
        r = ranks.get(ref.key)
        rank = Entry("—") if r is None else Entry(f"{r.rank} [{r.low}–{r.high}]", r.rank)
        deltas = [_delta(ctx, ref.key, m, baseline) for m in metrics]
        rows.append(Row(ref.key, q.labels, q.state, [rank, *q.entries, *deltas, *c.entries]))
    return report, Table("leaderboard", title, report.label_keys, columns, rows)


def _aligned(scores, cells: list[str], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(cells × videos) of `metric` over the videos every cell has a value for, and their prompts."""
    frames = [scores.series(c, metric) for c in cells]
    joined = pd.concat([f["value"].rename(c) for f, c in zip(frames, cells)], axis=1, join="inner").dropna()
    if joined.empty:
        raise UsageError(f"no video has a {metric} value in every ranked cell; rank by another metric")
    return joined.to_numpy().T, frames[0].loc[joined.index, "prompt"].to_numpy()


def _delta(ctx, cell: str, metric: str, baseline: str) -> Entry:
    return Entry("baseline") if cell == baseline else paired_entry(ctx, cell, metric)


def write_leaderboard(stores: Stores, refs: list[CellRef], out_dir: Path, title: str, metrics: list[str],
                      baseline: str, **options) -> dict[str, Path]:
    """Write leaderboard.md, .csv, .html and .tex; nothing is written when any input is bad."""
    from harness.report.page import render, run_metadata

    report, table = build_leaderboard(stores, refs, title, metrics, baseline, **options)
    base_name = next(r.name(report.label_keys) for r in refs if r.key == baseline)
    note = (f"Ranked by {metrics[0]} (1 = best; interval: 95% of bootstrap draws over prompts). Δ against "
            f"{base_name}, paired by (prompt, seed); *: Holm-corrected p < {report.resampling.alpha:g} across "
            "the rows. Mean ± 95% CI half-width; bold: best and significantly ahead of every other row; ≈: tied.")
    timing = timing_note(report.timings) if report.timings else "No timing pass: FPS not shown (`refinery bench`)."
    lines = [f"# {title}", "", note, "", report.resampling.describe(), "", timing, "", *markdown_table(table), ""]
    files = {
        "leaderboard.md": "\n".join(lines).encode(),
        "leaderboard.csv": _csv(report, table, metrics, baseline),
        "leaderboard.tex": booktabs(f"{title}. {note}", "Method", [("", ["rank"]), *_groups(table)],
                                    [(", ".join(row.labels), [latex_entry(e.text, e.mark) for e in row.entries])
                                     for row in table.rows]).encode(),
        "leaderboard.html": render("leaderboard.html.j2", title=title, note=note, stats=report.resampling.describe(),
                                   timing=timing, meta=run_metadata(), table=table, notes=report.notes).encode(),
    }
    out_dir = Path(out_dir)
    remove_stale_temp_files(out_dir)  # of a leaderboard writer killed mid-write
    for name, data in files.items():
        atomic_write_bytes(out_dir / name, data)
    return {name: out_dir / name for name in files}


def _groups(table: Table) -> list[tuple[str, list[str]]]:
    columns = table.columns[1:]
    return [(name, [c.title for c in columns if c.group == name]) for name in dict.fromkeys(c.group for c in columns)]


def _csv(report: ReportData, table: Table, metrics: list[str], baseline: str) -> bytes:
    """One row per ranked cell: rank and interval, labels, each metric's mean and CI, Δ, p, costs."""
    summary = {(r["cell"], r["metric"]): r for r in report.summary.to_dict("records")}
    paired = {(r["cell"], r["metric"]): r for r in report.paired.to_dict("records")}
    records = []
    for row in table.rows:
        rank = row.entries[0].text
        record = {"cell": row.cell, **dict(zip(report.label_keys, row.labels)), "state": row.state,
                  "rank": rank.split(" ")[0], "rank_interval": rank.partition(" ")[2].strip("[]")}
        for m in metrics:
            s, p = summary.get((row.cell, m), {}), paired.get((row.cell, m), {})
            record.update({f"{m}.mean": s.get("mean"), f"{m}.ci_low": s.get("ci_low"), f"{m}.ci_high": s.get("ci_high"),
                           f"{m}.delta": p.get("delta"), f"{m}.delta_ci_low": p.get("ci_low"),
                           f"{m}.delta_ci_high": p.get("ci_high"), f"{m}.p_holm": p.get("p_holm")})
        for m in [*OVERHEAD, *TIMING]:
            if (row.cell, m) in summary:
                record[m] = summary[(row.cell, m)]["mean"]
        record["baseline_cell"] = baseline
        records.append(record)
    return csv_bytes(pd.DataFrame(records))
