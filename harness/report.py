"""Tables, CSV, HTML and a figure from the store.

The whole selection of cells is read into one long DataFrame (one row per cell, video and metric
output), summarised per cell and metric with a percentile bootstrap CI over videos, and written
as report.md / report.csv / report.html / figure.png. Cells whose spec names another suite or
other seeds are never put in one table: each comparable group gets its own. Cells that are
missing, running or failed stay in the tables, marked as such.
"""
from __future__ import annotations

import hashlib
import html
import io
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness.errors import UsageError
from harness.store import Cell, Store, atomic_write_bytes, canonical_json

_COLUMNS = ("cell", "state", "video", "prompt", "seed", "metric", "value", "higher_is_better")
_SUMMARY = ("higher_is_better", "mean", "ci_low", "ci_high", "n")
_COMPARED = ("suite", "seeds")
_FIGURE = "figure.png"


@dataclass
class CellRef:
    key: str
    labels: dict[str, str] = field(default_factory=dict)  # the swept settings, e.g. {"steps": "8"}


def bootstrap_ci(values: np.ndarray, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean; deterministic for a given seed."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return math.nan, math.nan
    if values.size == 1:
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


# -- reading the store ----------------------------------------------------------------------------

def collect(store: Store, refs: list[CellRef]) -> pd.DataFrame:
    """One row per (cell, video, metric output); a cell with nothing to show gets one NaN row."""
    label_keys = _label_keys(refs)
    rows = []
    for ref in refs:
        base = {"cell": ref.key, **{k: ref.labels.get(k, "") for k in label_keys}}
        cell = store.cell(ref.key)
        state = _state(cell)
        found = _score_rows(cell) if state == "complete" else []
        rows += [{**base, "state": state, **row} for row in found or [{}]]
    df = pd.DataFrame(rows, columns=["cell", *label_keys, *_COLUMNS[1:]])
    df["video"] = df["video"].astype("Int64")
    df["value"] = df["value"].astype(float)
    return df


def _label_keys(refs: list[CellRef]) -> list[str]:
    keys = [r.key for r in refs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise UsageError(f"cell {twice[0]} is listed twice in the report; list each cell once")
    labels = list(dict.fromkeys(k for r in refs for k in r.labels))
    clash = [k for k in labels if k in _COLUMNS or k in _SUMMARY]
    if clash:
        raise UsageError(f"label {clash[0]!r} clashes with a report column; rename that label")
    return labels


def _state(cell: Cell) -> str:
    return cell.state()  # running, or interrupted when its writer is gone


def _score_rows(cell: Cell) -> list[dict]:
    indices = cell.video_indices()
    records = [cell.read_record(i) for i in indices]
    rows = []
    for name, payload in sorted(cell.read_scores().items()):
        for output in sorted(payload["values"]):
            values = payload["values"][output]
            if len(values) != len(indices):
                raise UsageError(f"{cell.path / 'scores' / name}.json has {len(values)} values "
                                 f"but the cell has {len(indices)} videos; rescore this cell")
            hib = payload["higher_is_better"].get(output)
            rows += [{"video": i, "prompt": rec.get("prompt"), "seed": rec.get("seed"),
                      "metric": f"{name}.{output}", "value": math.nan if v is None else float(v),
                      "higher_is_better": hib}
                     for i, rec, v in zip(indices, records, values)]
    return rows


def add_overhead(df: pd.DataFrame, store: Store, baseline: str) -> pd.DataFrame:
    """The AutoRefiner paper's compute columns, per video, relative to the `baseline` cell:
    overhead.delta_nfe (per video), overhead.verify (verifier calls per chunk) and
    overhead.delta_vae (extra chunk decodes per chunk). All read from the ledger's counts."""
    counts = df[df["metric"].isin(["compute.nfe", "compute.verifier_calls", "compute.decodes"])]
    wide = counts.pivot_table(index=["cell", "video"], columns="metric", values="value").reset_index()
    base = wide[wide["cell"] == baseline]
    if base.empty:
        return df
    base_nfe, base_vae = base["compute.nfe"].mean(), base["compute.decodes"].mean()
    chunks = {c: store.cell(c).spec()["model"]["num_chunks"] for c in wide["cell"].unique()}
    per_chunk = wide["cell"].map(chunks)
    derived = {"overhead.delta_nfe": wide["compute.nfe"] - base_nfe,
               "overhead.verify": wide["compute.verifier_calls"] / per_chunk,
               "overhead.delta_vae": (wide["compute.decodes"] - base_vae) / per_chunk}
    videos = df.drop_duplicates(["cell", "video"]).set_index(["cell", "video"])
    videos = videos.loc[list(zip(wide["cell"], wide["video"]))].reset_index()  # labels, prompt, seed
    rows = [videos.assign(metric=metric, value=values.to_numpy(), higher_is_better=False)[df.columns]
            for metric, values in derived.items()]
    return pd.concat([df, *rows], ignore_index=True)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell × metric: mean, bootstrap CI and n (the non-NaN values)."""
    keys = [c for c in df.columns if c not in _COLUMNS[2:]] + ["metric"]
    rows = []
    for key, group in df.groupby(keys, sort=False, dropna=False):
        values = group["value"].to_numpy(dtype=float)
        values = values[~np.isnan(values)]
        low, high = bootstrap_ci(values)
        rows.append({**dict(zip(keys, key)), "higher_is_better": group["higher_is_better"].iloc[0],
                     "mean": float(values.mean()) if values.size else math.nan,
                     "ci_low": low, "ci_high": high, "n": int(values.size)})
    return pd.DataFrame(rows, columns=[*keys, *_SUMMARY])


def reward_hacking(summary: pd.DataFrame, baseline: str, reward: str, held_out: list[str]) -> dict[str, str]:
    """Cells that raise the training `reward` above the baseline's CI while a `held_out` score gets
    worse beyond the baseline's CI (the AutoRefiner paper's LoRA row: reward up, motion degree 0):
    cell -> the held-out scores that fell, "" for cells that are not flagged."""
    stats = {(r["cell"], r["metric"]): r for r in summary.to_dict("records")}
    base = stats.get((baseline, reward))
    flags = {}
    for cell in summary["cell"].unique():
        raised = cell != baseline and base is not None and (cell, reward) in stats \
            and stats[(cell, reward)]["mean"] > base["ci_high"]
        fallen = [m for m in held_out if raised and _worse(stats.get((cell, m)), stats.get((baseline, m)))]
        flags[cell] = ", ".join(fallen)
    return flags


def _worse(stat: dict | None, base: dict | None) -> bool:
    if stat is None or base is None or math.isnan(stat["mean"]) or math.isnan(base["ci_low"]):
        return False
    return stat["mean"] < base["ci_low"] if base["higher_is_better"] else stat["mean"] > base["ci_high"]


def comparable_groups(store: Store, refs: list[CellRef]) -> list[tuple[dict | None, list[CellRef]]]:
    """Split refs by their spec's suite and seeds, in order of first appearance.

    Each group is ({"suite": ..., "seeds": ...}, refs); cells with no spec yet (never started)
    cannot be placed and form a last group keyed None.
    """
    groups: dict[str, tuple[dict | None, list[CellRef]]] = {}
    for ref in refs:
        spec = store.cell(ref.key).spec()
        key = None if spec is None else {f: spec.get(f) for f in _COMPARED}
        groups.setdefault(canonical_json(key), (key, []))[1].append(ref)
    unplaced = groups.pop(canonical_json(None), None)
    return list(groups.values()) + ([unplaced] if unplaced else [])


# -- the report ---------------------------------------------------------------------------------

@dataclass
class _Table:
    heading: str | None
    note: str
    header: list[str]
    rows: list[list[tuple[str, bool]]]  # (text, bold) per column


def write_report(store: Store, refs: list[CellRef], out_dir: Path, title: str,
                 metrics: list[str] | None = None,
                 figure: tuple[str, str | None] | None = ("compute.nfe", None),
                 baseline: str | None = None,
                 hacking: tuple[str, list[str]] | None = None) -> dict[str, Path]:
    """Write report.md, report.csv, report.html and (when its metrics exist) figure.png.

    metrics: names like "dynamics" (all its outputs) or "dynamics.ssim"; None for all.
    figure: (x, y) metrics; y None means the first table metric that is not compute.*.
    baseline: the key of the cell that compute overheads are measured against (see add_overhead).
    hacking: (training reward, held-out scores): adds a "reward hacking" column (see reward_hacking);
    it needs a baseline.
    """
    out_dir = Path(out_dir)
    df = collect(store, refs)
    summary = summarize(add_overhead(df, store, baseline) if baseline else df)
    columns = _select_metrics(summary, metrics)
    label_keys = _label_keys(refs)
    groups = comparable_groups(store, refs)
    headings = _headings([key for key, _ in groups])
    flags = reward_hacking(summary, baseline, *hacking) if hacking and baseline else None
    tables = [_table(summary, members, label_keys, columns, heading, flags)
              for heading, (_, members) in zip(headings, groups)]
    paths = {"csv": out_dir / "report.csv", "md": out_dir / "report.md",
             "html": out_dir / "report.html"}
    png, figure_note = _figure(summary, groups, headings, label_keys, columns, figure)
    if png is None:
        # a figure left from an earlier report would no longer match the tables
        (out_dir / _FIGURE).unlink(missing_ok=True)
    else:
        paths["figure"] = out_dir / _FIGURE
        atomic_write_bytes(paths["figure"], png)
    csv = summary.drop(columns=["higher_is_better"]).to_csv(index=False, lineterminator="\n")
    atomic_write_bytes(paths["csv"], csv.encode())
    atomic_write_bytes(paths["md"], _markdown(title, tables, png is not None, figure_note).encode())
    atomic_write_bytes(paths["html"], _html(title, tables, png is not None, figure_note).encode())
    return paths


def _select_metrics(summary: pd.DataFrame, wanted: list[str] | None) -> list[str]:
    known = sorted(set(summary["metric"].dropna()))
    if wanted is None:
        return known
    chosen: list[str] = []
    for name in wanted:
        found = [m for m in known if m == name or m.startswith(name + ".")]
        if not found:
            raise UsageError(f"no cell has scores for metric {name!r} (known: "
                             f"{', '.join(known) or 'none'}); fix the name or score the cells")
        chosen += [m for m in found if m not in chosen]
    return chosen


def _headings(keys: list[dict | None]) -> list[str | None]:
    """Name, for each group, the fields that set it apart; no heading when all are comparable."""
    if len(keys) < 2:
        return [None] * len(keys)
    placed = [k for k in keys if k is not None]
    differ = [f for f in _COMPARED if len({canonical_json(k[f]) for k in placed}) > 1]
    return ["Not started (suite and seeds unknown)" if key is None else
            "; ".join(f"{f} = {_short_json(key[f])}" for f in differ or _COMPARED)
            for key in keys]


def _short_json(value: object, limit: int = 80) -> str:
    text = canonical_json(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit - 20]}… (sha256 {hashlib.sha256(text.encode()).hexdigest()[:8]})"


def _table(summary: pd.DataFrame, refs: list[CellRef], label_keys: list[str],
           columns: list[str], heading: str | None, flags: dict[str, str] | None = None) -> _Table:
    stats = {(r["cell"], r["metric"]): r for r in summary.to_dict("records")}
    states = dict(zip(summary["cell"], summary["state"]))
    better = {m: _higher_is_better(summary, m) for m in columns}
    best = {m: _best(stats, refs, states, m, better[m]) for m in columns}
    metric_header = [f"{m} {_arrow(better[m])}".rstrip() for m in columns]
    header = [*label_keys, *metric_header, *(["reward hacking (held-out scores that fell)"] if flags else []),
              "state", "cell"]
    rows = []
    for ref in refs:
        row = [(ref.labels.get(k, ""), False) for k in label_keys]
        for m in columns:
            stat = stats.get((ref.key, m))
            bold = stat is not None and stat["mean"] in best[m]
            row.append((_cell_text(states[ref.key], stat), bold))
        if flags is not None:
            row.append((flags.get(ref.key, ""), bool(flags.get(ref.key))))
        rows.append(row + [(states[ref.key], False), (ref.key, False)])
    members = {r.key for r in refs}
    counts = sorted({int(r["n"]) for r in stats.values() if r["n"] and r["cell"] in members})
    return _Table(heading, _note(counts), header, rows)


def _higher_is_better(summary: pd.DataFrame, metric: str) -> bool | None:
    flags = summary.loc[summary["metric"] == metric, "higher_is_better"].dropna()
    return bool(flags.iloc[0]) if len(flags) else None


def _arrow(higher_is_better: bool | None) -> str:
    return {True: "↑", False: "↓", None: ""}[higher_is_better]


def _best(stats: dict, refs: list[CellRef], states: dict, metric: str,
          higher_is_better: bool | None) -> set[float]:
    """The best mean among complete cells, when there are at least two to compare."""
    means = [stats[(r.key, metric)]["mean"] for r in refs
             if states[r.key] == "complete" and (r.key, metric) in stats]
    means = [m for m in means if not math.isnan(m)]
    if higher_is_better is None or len(means) < 2:
        return set()
    return {max(means) if higher_is_better else min(means)}


def _cell_text(state: str, stat: dict | None) -> str:
    if state != "complete":
        return state
    if stat is None or stat["n"] == 0:
        return "—"
    return _format(stat["mean"], (stat["ci_high"] - stat["ci_low"]) / 2)


def _format(mean: float, half_width: float) -> str:
    digits = 3 if abs(mean) < 10 else 2
    return f"{mean:.{digits}f} ± {half_width:.{digits}f}"


def _note(counts: list[int]) -> str:
    if not counts:
        return "No complete cells with scores yet."
    over = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    videos = "video" if counts == [1] else "videos"
    return (f"Mean ± 95% bootstrap CI over {over} {videos} (prompts × seeds); "
            "↑ higher is better, ↓ lower is better; best of the complete cells in bold.")


# -- rendering ----------------------------------------------------------------------------------

def _md(text: str) -> str:
    # config strings may hold markup: escape it, and keep '|' and newlines from breaking the row
    return html.escape(str(text)).replace("|", "\\|").replace("\n", " ")


def _markdown(title: str, tables: list[_Table], has_figure: bool, figure_note: str) -> str:
    lines = [f"# {_md(title)}", ""]
    for table in tables:
        if table.heading:
            lines += [f"## {_md(table.heading)}", ""]
        lines += [_md(table.note), "", "| " + " | ".join(_md(h) for h in table.header) + " |",
                  "|" + " --- |" * len(table.header)]
        lines += ["| " + " | ".join(f"**{_md(t)}**" if bold else _md(t) for t, bold in row) + " |"
                  for row in table.rows]
        lines.append("")
    lines.append(f"![{_md(figure_note)}]({_FIGURE})" if has_figure else f"_{_md(figure_note)}_")
    return "\n".join(lines) + "\n"


def _html(title: str, tables: list[_Table], has_figure: bool, figure_note: str) -> str:
    e = html.escape
    parts = ['<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">',
             f"<title>{e(title)}</title>",
             "<style>table{border-collapse:collapse}th,td{border:1px solid #bbb;"
             "padding:2px 8px;text-align:left}</style>\n</head>\n<body>",
             f"<h1>{e(title)}</h1>"]
    for table in tables:
        if table.heading:
            parts.append(f"<h2>{e(table.heading)}</h2>")
        parts.append(f"<p>{e(table.note)}</p>\n<table>\n<thead><tr>"
                     + "".join(f"<th>{e(h)}</th>" for h in table.header) + "</tr></thead>\n<tbody>")
        parts += ["<tr>" + "".join(f"<td><b>{e(t)}</b></td>" if bold else f"<td>{e(t)}</td>"
                                   for t, bold in row) + "</tr>" for row in table.rows]
        parts.append("</tbody>\n</table>")
    parts.append(f'<p><img src="{_FIGURE}" alt="{e(figure_note)}"></p>' if has_figure
                 else f"<p><em>{e(figure_note)}</em></p>")
    return "\n".join(parts) + "\n</body>\n</html>\n"


# -- the figure ---------------------------------------------------------------------------------

def _figure(summary: pd.DataFrame, groups: list, headings: list[str | None],
            label_keys: list[str], columns: list[str],
            axes: tuple[str, str | None] | None) -> tuple[bytes | None, str]:
    """figure.png as bytes with its caption, or None with the reason there is none."""
    if axes is None:
        return None, "No figure requested."
    x, y = axes
    if y is None:
        y = next((m for m in columns if not m.startswith("compute.")), None)
        if y is None:
            return None, f"No figure: no quality metric to plot against {x}."
    stats = {(r["cell"], r["metric"]): r for r in summary.to_dict("records")
             if r["state"] == "complete" and r["n"]}
    varying = [k for k in label_keys if len({r.labels.get(k) for _, g in groups for r in g}) > 1]
    panels = [(heading, [(ref, stats[(ref.key, x)], stats[(ref.key, y)]) for ref in members
                         if (ref.key, x) in stats and (ref.key, y) in stats])
              for heading, (_, members) in zip(headings, groups)]
    panels = [p for p in panels if p[1]]
    if not panels:
        return None, f"No figure: no complete cell has scores for both {x} and {y}."
    arrow = _arrow(_higher_is_better(summary, y))
    return _plot(panels, x, f"{y} {arrow}".rstrip(), varying or label_keys), f"{y} against {x}"


def _plot(panels: list, x: str, y: str, label_keys: list[str]) -> bytes:
    # the Agg canvas directly, so that a report never touches pyplot's global backend state
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * len(panels), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, (heading, points) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for ref, sx, sy in points:
            # the percentile CI need not contain the mean for tiny n; error bars cannot be negative
            err = [[max(sy["mean"] - sy["ci_low"], 0.0)], [max(sy["ci_high"] - sy["mean"], 0.0)]]
            ax.errorbar(sx["mean"], sy["mean"], yerr=err, fmt="o", capsize=3)
            text = ", ".join(f"{k}={ref.labels.get(k, '')}" for k in label_keys) or ref.key
            # parse_math off: a '$' in a label must print as itself, not as TeX
            ax.annotate(text, (sx["mean"], sy["mean"]), xytext=(4, 4), textcoords="offset points",
                        fontsize=7, parse_math=False)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        if heading:
            ax.set_title(textwrap.fill(heading, 70), fontsize=8, parse_math=False)
        ax.margins(x=0.2)  # room for the annotations of the outermost points
        ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, metadata={"Software": None})
    return buf.getvalue()
