"""Tables, paired differences, figures, LaTeX, CSV and a self-contained HTML page from the store.

The whole selection of cells is read into one long DataFrame (one row per cell, video and metric
output). Per cell and metric it is summarised as a mean with a prompt-clustered bootstrap CI, and per
cell against the report's baseline as a paired difference over matched (prompt, seed) pairs with its
clustered CI and a Holm-corrected p-value (harness.report.stats). Cells whose spec names another suite or
other seeds are never put in one table: each comparable group gets its own section. Cells that are
missing, running or failed stay in the tables, marked as such.

Written: report.md, report.csv (cell × metric), paired.csv (cell × metric against the baseline),
report.tex (booktabs), report.html (one self-contained file: harness.report.page) and one
cost-against-quality figure per headline metric (harness.report.figures).
"""
from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.errors import UsageError
from harness.report.resampling import Resampling
from harness.report.stats import clustered_mean, holm, paired_difference
from harness.store.files import canonical_json, sha256_hex
from harness.store.cells import Cell, CellRef, Store
from harness.report.timing import Timing

# the long form of scores, one row per (cell, video, metric output); a label may not take these names
SCORE_COLUMNS = ("cell", "state", "video", "prompt", "seed", "metric", "value", "higher_is_better")
_SUMMARY = ("higher_is_better", "mean", "ci_low", "ci_high", "n", "prompts")
_PAIRED = ("baseline_cell", "delta", "ci_low", "ci_high", "p_value", "p_holm", "n_pairs", "mde")
_COMPARED = ("suite", "seeds")
# Columns the report derives itself: what a cell costs relative to the baseline, and its timing pass.
OVERHEAD = {"overhead.delta_nfe": "ΔNFE", "overhead.delta_forwards": "Δforwards",
            "overhead.verify": "#Verify", "overhead.delta_vae": "ΔVAE"}  # per video, per chunk, per chunk
TIMING = {"timing.fps": "FPS", "timing.fps_vs_base": "FPS ÷ base"}
COST_PREFIXES = ("overhead.", "compute.", "timing.")


def is_cost(metric: str) -> bool:
    return metric.startswith(COST_PREFIXES)


# -- reading the store ----------------------------------------------------------------------------

def collect(store: Store, refs: list[CellRef]) -> pd.DataFrame:
    """One row per (cell, video, metric output); a cell with nothing to show gets one NaN row."""
    label_keys = label_keys_of(refs)
    rows = []
    for ref in refs:
        base = {"cell": ref.key, **{k: ref.labels.get(k, "") for k in label_keys}}
        cell = store.cell(ref.key)
        state = _state(cell)
        found = _score_rows(cell) if state == "complete" else []
        rows += [{**base, "state": state, **row} for row in found or [{}]]
    df = pd.DataFrame(rows, columns=["cell", *label_keys, *SCORE_COLUMNS[1:]])
    df["video"] = df["video"].astype("Int64")
    df["value"] = df["value"].astype(float)
    return df


def label_keys_of(refs: list[CellRef]) -> list[str]:
    keys = [r.key for r in refs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise UsageError(f"cell {twice[0]} is listed twice in the report; list each cell once")
    labels = list(dict.fromkeys(k for r in refs for k in r.labels))
    clash = [k for k in labels if k in SCORE_COLUMNS or k in _SUMMARY or k in _PAIRED]
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
    overhead.delta_vae (extra chunk decodes per chunk), and beside ΔNFE the true count of extra
    forward passes, overhead.delta_forwards (NFE plus KV-cache passes: the paper's ΔNFE leaves the
    cache passes out). All read from the ledger's counts."""
    counted = ["compute.nfe", "compute.cache_passes", "compute.verifier_calls", "compute.decodes"]
    counts = df[df["metric"].isin(counted)]
    wide = counts.pivot_table(index=["cell", "video"], columns="metric", values="value").reset_index()
    base = wide[wide["cell"] == baseline]
    if base.empty or not set(counted) <= set(wide.columns):
        return df
    forwards = wide["compute.nfe"] + wide["compute.cache_passes"]
    base_forwards = (base["compute.nfe"] + base["compute.cache_passes"]).mean()
    chunks = {c: store.cell(c).spec()["model"]["num_chunks"] for c in wide["cell"].unique()}
    per_chunk = wide["cell"].map(chunks)
    derived = {"overhead.delta_nfe": wide["compute.nfe"] - base["compute.nfe"].mean(),
               "overhead.delta_forwards": forwards - base_forwards,
               "overhead.verify": wide["compute.verifier_calls"] / per_chunk,
               "overhead.delta_vae": (wide["compute.decodes"] - base["compute.decodes"].mean()) / per_chunk}
    videos = df.drop_duplicates(["cell", "video"]).set_index(["cell", "video"])
    videos = videos.loc[list(zip(wide["cell"], wide["video"]))].reset_index()  # labels, prompt, seed
    rows = [videos.assign(metric=metric, value=values.to_numpy(), higher_is_better=False)[df.columns]
            for metric, values in derived.items()]
    return pd.concat([df, *rows], ignore_index=True)


def add_timing(summary: pd.DataFrame, timings: dict[str, Timing], baseline: str | None) -> pd.DataFrame:
    """Rows timing.fps and timing.fps_vs_base from the timing pass (no CI: a median of repeats)."""
    rows = []
    for key, group in summary.groupby("cell", sort=False):
        first = group.iloc[0].to_dict()
        timing = timings.get(key)
        if key == baseline and timings:
            figures = {"timing.fps": float(np.median([t.base_fps for t in timings.values()])),
                       "timing.fps_vs_base": 1.0}
        elif timing is not None:
            figures = {"timing.fps": timing.fps, "timing.fps_vs_base": timing.ratio}
        else:
            continue
        repeats = sum(t.repeats for t in timings.values()) if key == baseline else timing.repeats
        rows += [{**first, "metric": m, "higher_is_better": True, "mean": v, "ci_low": math.nan,
                  "ci_high": math.nan, "n": repeats, "prompts": 0} for m, v in figures.items()]
    return pd.concat([summary, pd.DataFrame(rows, columns=summary.columns)], ignore_index=True) if rows else summary


def summarize(df: pd.DataFrame, resampling: Resampling = Resampling(),
              without_ci: frozenset[str] = frozenset()) -> pd.DataFrame:
    """One row per cell × metric: mean, prompt-clustered bootstrap CI, n (non-NaN values) and the
    number of prompts. Metrics in `without_ci` (timings taken during generation) get no CI."""
    keys = [c for c in df.columns if c not in SCORE_COLUMNS[2:]] + ["metric"]
    rows = []
    for key, group in df.groupby(keys, sort=False, dropna=False):
        values = group["value"].to_numpy(dtype=float)
        est = clustered_mean(values, group["prompt"].to_numpy(), resampling)
        low, high = (math.nan, math.nan) if key[-1] in without_ci else (est.ci_low, est.ci_high)
        rows.append({**dict(zip(keys, key)), "higher_is_better": group["higher_is_better"].iloc[0],
                     "mean": est.mean, "ci_low": low, "ci_high": high, "n": est.n, "prompts": est.prompts})
    return pd.DataFrame(rows, columns=[*keys, *_SUMMARY])


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


# -- paired differences ---------------------------------------------------------------------------

class Scores:
    """Per (cell, metric): the values indexed by video, with each video's prompt (its cluster)."""

    def __init__(self, df: pd.DataFrame):
        rows = df.dropna(subset=["metric"])
        self._series = {key: g.set_index("video")[["value", "prompt", "seed"]]
                        for key, g in rows.groupby(["cell", "metric"], sort=False)}

    def has(self, cell: str, metric: str) -> bool:
        return (cell, metric) in self._series

    def series(self, cell: str, metric: str) -> pd.DataFrame:
        """value, prompt and seed by video."""
        return self._series[(cell, metric)]

    def paired(self, cell: str, other: str, metric: str, resampling: Resampling):
        """cell − other over the videos both have, paired by (prompt, seed)."""
        a, b = self._series[(cell, metric)], self._series[(other, metric)]
        both = a.merge(b, left_index=True, right_index=True, suffixes=("_a", "_b"))
        mismatched = both[(both["prompt_a"] != both["prompt_b"]) | (both["seed_a"] != both["seed_b"])]
        if len(mismatched):
            raise UsageError(f"cells {cell} and {other} hold other (prompt, seed) pairs under video "
                             f"{mismatched.index[0]}; regenerate one of them")
        return paired_difference(both["value_a"].to_numpy(), both["value_b"].to_numpy(),
                                 both["prompt_a"].to_numpy(), resampling)


def paired_table(scores: Scores, groups: list[tuple[dict | None, list[CellRef]]], baseline: str | None,
                 metrics: list[str], label_keys: list[str], states: dict[str, str],
                 resampling: Resampling) -> pd.DataFrame:
    """One row per cell × metric against the baseline, for the cells of the baseline's comparable group:
    Δ, its clustered CI, the permutation p-value and its Holm correction across the group's methods."""
    columns = ["cell", *label_keys, "metric", *_PAIRED]
    rows = []
    members = next((refs for _, refs in groups if baseline in {r.key for r in refs}), [])
    others = [r for r in members if r.key != baseline and states[r.key] == "complete"]
    for metric in metrics:
        if not scores.has(baseline, metric):
            continue
        family = []
        for ref in others:
            if scores.has(ref.key, metric):
                p = scores.paired(ref.key, baseline, metric, resampling)
                family.append({"cell": ref.key, **{k: ref.labels.get(k, "") for k in label_keys},
                               "metric": metric, "baseline_cell": baseline, "delta": p.delta,
                               "ci_low": p.ci_low, "ci_high": p.ci_high, "p_value": p.p_value,
                               "n_pairs": p.n_pairs, "mde": p.mde})
        for row, adjusted in zip(family, holm([r["p_value"] for r in family])):
            rows.append({**row, "p_holm": adjusted})
    return pd.DataFrame(rows, columns=columns)


def reward_hacking(paired: pd.DataFrame, summary: pd.DataFrame, reward: str, held_out: list[str],
                   alpha: float) -> dict[str, str]:
    """Cells whose paired Δ raises the training `reward` (Holm-corrected) while a `held_out` score gets
    worse by a margin that matters: significantly (paired, Holm) *and* beyond the baseline's own CI
    (the AutoRefiner paper's LoRA row: reward up, motion degree 0; a search method's 0.01 drop of
    imaging quality is not reward hacking): cell -> the held-out scores that fell, "" if none."""
    deltas = {(r["cell"], r["metric"]): r for r in paired.to_dict("records")}
    stats = {(r["cell"], r["metric"]): r for r in summary.to_dict("records")}
    flags = {}
    for cell in paired["cell"].unique():
        base = paired.loc[paired["cell"] == cell, "baseline_cell"].iloc[0]
        rise = deltas.get((cell, reward))
        raised = rise is not None and rise["delta"] > 0 and rise["p_holm"] < alpha
        fallen = [m for m in held_out if raised and (cell, m) in deltas
                  and _fell(deltas[(cell, m)], stats[(cell, m)], stats[(base, m)], alpha)]
        flags[cell] = ", ".join(fallen)
    return flags


def _fell(delta: dict, stat: dict, base: dict, alpha: float) -> bool:
    higher = base["higher_is_better"] is not False
    worse = delta["delta"] < 0 if higher else delta["delta"] > 0
    beyond = stat["mean"] < base["ci_low"] if higher else stat["mean"] > base["ci_high"]
    return worse and delta["p_holm"] < alpha and bool(beyond)


# -- the tables -----------------------------------------------------------------------------------

@dataclass
class Entry:
    text: str
    value: float | None = None  # what the column sorts by
    mark: str = ""  # best | tie | better | worse | flag | a cell state
    title: str = ""  # the details a hover shows


@dataclass
class Column:
    metric: str
    title: str  # under its group's header (HTML, LaTeX)
    group: str
    full: str = ""  # where no group header shows (Markdown): the metric's whole name

    def __post_init__(self) -> None:
        self.full = self.full or self.title


@dataclass
class Row:
    cell: str
    labels: list[str]
    state: str
    entries: list[Entry]


@dataclass
class Table:
    kind: str  # scores | paired
    caption: str
    label_keys: list[str]
    columns: list[Column]
    rows: list[Row]

    def column_groups(self) -> list[tuple[str, int]]:
        """Runs of adjacent columns of one metric group: (group, how many columns)."""
        spans: list[tuple[str, int]] = []
        for column in self.columns:
            if spans and spans[-1][0] == column.group:
                spans[-1] = (column.group, spans[-1][1] + 1)
            else:
                spans.append((column.group, 1))
        return spans


@dataclass
class Section:
    """One comparable group of cells: its summary (cost and headline columns), the same beside its
    paired differences, and one pair of tables per metric group."""
    heading: str | None
    refs: list[CellRef]
    baseline: str | None  # the baseline's key where it is in this group
    note: str
    summary: Table
    summary_paired: Table | None
    groups: list[tuple[str, Table, Table | None]]


def metric_group(metric: str) -> str:
    return metric.split(".", 1)[0]


def metric_title(metric: str, higher_is_better: bool | None, short: bool = False) -> str:
    name = OVERHEAD.get(metric) or TIMING.get(metric) or (metric.split(".", 1)[-1] if short else metric)
    return f"{name} {_arrow(higher_is_better)}".rstrip()


def _arrow(higher_is_better: bool | None) -> str:
    return {True: "↑", False: "↓", None: ""}[higher_is_better]


def higher_is_better_of(summary: pd.DataFrame, metric: str) -> bool | None:
    flags = summary.loc[summary["metric"] == metric, "higher_is_better"].dropna()
    return bool(flags.iloc[0]) if len(flags) else None


@dataclass
class _Context:
    """What every table of one report reads."""
    stats: dict[tuple[str, str], dict]  # (cell, metric) -> summary row
    paired: dict[tuple[str, str], dict]  # (cell, metric) -> paired row
    states: dict[str, str]
    better: dict[str, bool | None]
    scores: Scores
    resampling: Resampling
    timings: dict[str, Timing]
    flags: dict[str, str] | None
    label_keys: list[str]
    leaders: dict[tuple, tuple[str, set[str]] | None] = field(default_factory=dict)


def _scores_table(ctx: _Context, refs: list[CellRef], columns: list[str], caption: str,
                  with_flags: bool = False) -> Table:
    leaders = {m: _leaders(ctx, refs, m) for m in columns if not is_cost(m)}
    cols = [Column(m, metric_title(m, ctx.better.get(m), True), metric_group(m), metric_title(m, ctx.better.get(m)))
            for m in columns]
    if with_flags and ctx.flags is not None:
        cols.append(Column("reward_hacking", "reward hacking (held-out scores that fell)", "flags"))
    rows = []
    for ref in refs:
        state = ctx.states[ref.key]
        entries = [_score_entry(ctx, ref.key, m, leaders.get(m)) for m in columns]
        if len(cols) > len(columns):
            flag = ctx.flags.get(ref.key, "")
            entries.append(Entry(flag, None, "flag" if flag else ""))
        rows.append(Row(ref.key, [ref.labels.get(k, "") for k in ctx.label_keys], state, entries))
    return Table("scores", caption, ctx.label_keys, cols, rows)


def _score_entry(ctx: _Context, cell: str, metric: str, leaders: tuple[str, set[str]] | None) -> Entry:
    state = ctx.states[cell]
    if state != "complete":
        return Entry(state, None, state)
    stat = ctx.stats.get((cell, metric))
    if stat is None or stat["n"] == 0:
        return Entry("—")
    mark = ""
    if leaders is not None:
        best, tied = leaders
        mark = "best" if cell == best and not tied else "tie" if cell == best or cell in tied else ""
    if metric.startswith("timing."):
        timing = ctx.timings.get(cell)
        if timing is None:  # the baseline's own row
            return Entry(f"{stat['mean']:.2f}", stat["mean"])
        title = (f"pairwise ratios {timing.ratio_low:.2f}–{timing.ratio_high:.2f}; in CPU time "
                 f"{timing.cpu_ratio:.2f}" + (f"; taken under load {max(timing.load)} on {timing.cores} cores"
                                              if timing.loaded else ""))
        return Entry(f"{stat['mean']:.2f}" + (" (loaded)" if timing.loaded else ""), stat["mean"],
                     "flag" if timing.loaded else "", title)
    title = f"{stat['n']} videos, {stat['prompts']} prompts"
    if is_cost(metric):  # counts: the same for every video of a method, a CI would only say so
        return Entry(_count(stat["mean"]), stat["mean"], mark, title)
    if math.isnan(stat["ci_low"]):
        return Entry(_number(stat["mean"]), stat["mean"], mark, title)
    return Entry(_format(stat["mean"], (stat["ci_high"] - stat["ci_low"]) / 2), stat["mean"], mark,
                 f"CI [{_number(stat['ci_low'])}, {_number(stat['ci_high'])}], {title}")


def _leaders(ctx: _Context, refs: list[CellRef], metric: str) -> tuple[str, set[str]] | None:
    """The best complete cell and the cells it is not significantly ahead of (paired by (prompt, seed),
    permutation p >= alpha; uncorrected: "ahead of every other cell" holds only if each test rejects,
    which needs no multiplicity correction): the best is bold only when that set is empty."""
    cache_key = (tuple(r.key for r in refs), metric)
    if cache_key not in ctx.leaders:
        ctx.leaders[cache_key] = _find_leaders(ctx, refs, metric)
    return ctx.leaders[cache_key]


def _find_leaders(ctx: _Context, refs: list[CellRef], metric: str) -> tuple[str, set[str]] | None:
    better = ctx.better.get(metric)
    means = {r.key: ctx.stats[(r.key, metric)]["mean"] for r in refs
             if ctx.states[r.key] == "complete" and (r.key, metric) in ctx.stats
             and not math.isnan(ctx.stats[(r.key, metric)]["mean"])}
    if better is None or len(means) < 2:
        return None
    best = max(means, key=means.get) if better else min(means, key=means.get)
    tied = {c for c in means if c != best
            and not ctx.scores.paired(best, c, metric, ctx.resampling).significant(ctx.resampling.alpha)}
    return best, tied


def _paired_table(ctx: _Context, refs: list[CellRef], baseline: str, columns: list[str], caption: str) -> Table:
    cols = [Column(m, f"Δ {metric_title(m, ctx.better.get(m), True)}", metric_group(m),
                   f"Δ {metric_title(m, ctx.better.get(m))}") for m in columns]
    rows = []
    for ref in refs:
        if ref.key == baseline:
            continue
        state = ctx.states[ref.key]
        entries = [paired_entry(ctx, ref.key, m) if state == "complete" else Entry(state, None, state)
                   for m in columns]
        rows.append(Row(ref.key, [ref.labels.get(k, "") for k in ctx.label_keys], state, entries))
    return Table("paired", caption, ctx.label_keys, cols, rows)


def paired_entry(ctx: _Context, cell: str, metric: str) -> Entry:
    row = ctx.paired.get((cell, metric))
    if row is None or row["n_pairs"] == 0:
        return Entry("—")
    title = (f"p = {_p(row['p_value'])}, Holm {_p(row['p_holm'])}, {row['n_pairs']} pairs, "
             f"detectable (80% power): ±{_number(row['mde'])}")
    if math.isnan(row["ci_low"]):
        return Entry(_signed(row["delta"]), row["delta"], "", title)
    mark = ""
    if row["p_holm"] < ctx.resampling.alpha:
        up = row["delta"] > 0
        mark = "better" if up == bool(ctx.better.get(metric, True)) else "worse"
    text = f"{_signed(row['delta'])} ± {_number((row['ci_high'] - row['ci_low']) / 2)}"
    text += " *" if mark else f", MDE {_number(row['mde'])}"
    return Entry(text, row["delta"], mark,
                 f"CI [{_number(row['ci_low'])}, {_number(row['ci_high'])}], {title}")


def _number(x: float) -> str:
    digits = 3 if abs(x) < 10 else 2 if abs(x) < 1000 else 0
    return f"{x:.{digits}f}"


def _count(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.2f}"


def _signed(x: float) -> str:
    return ("+" if x >= 0 else "−") + _number(abs(x))


def _p(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def _format(mean: float, half_width: float) -> str:
    return f"{_number(mean)} ± {_number(half_width)}"


# -- the report -----------------------------------------------------------------------------------

@dataclass
class ReportData:
    """Everything a report shows, computed before anything is written."""
    title: str
    sections: list[Section]
    summary: pd.DataFrame
    paired: pd.DataFrame
    df: pd.DataFrame
    refs: list[CellRef]
    label_keys: list[str]
    headline: list[str]
    baseline: str | None
    resampling: Resampling
    timings: dict[str, Timing]
    notes: list[str]
    context: _Context

    def table(self, refs: list[CellRef], metrics: list[str], caption: str) -> Table:
        """A scores table of any metrics of this report, marked as the report marks them."""
        return _scores_table(self.context, refs, metrics, caption)


def build_report(store: Store, refs: list[CellRef], title: str, metrics: list[str] | None = None,
                 headline: list[str] | None = None, baseline: str | None = None,
                 hacking: tuple[str, list[str]] | None = None, resampling: Resampling = Resampling(),
                 timings: dict[str, Timing] | None = None,
                 generation_timings: frozenset[str] = frozenset()) -> ReportData:
    """Read and compute a report; every bad input raises here, before anything is written.

    metrics: names like "dynamics" (all its outputs) or "dynamics.ssim"; None for all.
    headline: metrics of the summary table and of one cost-against-quality figure each.
    baseline: the key of the cell that overheads and paired differences are measured against.
    hacking: (training reward, held-out scores): adds a "reward hacking" column (needs a baseline).
    timings: the timing pass's results per cell (harness.report.timing), relative to this baseline.
    generation_timings: metrics timed during generation: metadata, never a table column.
    """
    label_keys = label_keys_of(refs)
    df = collect(store, refs)
    states = dict(zip(df["cell"], df["state"]))
    if baseline is not None and states.get(baseline) != "complete":
        raise UsageError(f"the baseline cell {baseline} is {states.get(baseline, 'not in the report')}; "
                         "generate it (`refinery sweep` runs a report's baseline) or change report.baseline")
    timings = dict(timings or {})
    with_overhead = add_overhead(df, store, baseline) if baseline else df
    summary = summarize(with_overhead, resampling, generation_timings)
    summary = add_timing(summary, timings, baseline)
    columns, notes = _select_metrics(summary, metrics, states)
    shown = [m for m in columns if m not in generation_timings]
    if len(shown) < len(columns):
        notes.append(f"Timed during generation, not shown as scores (metadata, see each cell): "
                     f"{', '.join(m for m in columns if m in generation_timings)}.")
    shown += [m for m in TIMING if timings and m not in shown and (summary["metric"] == m).any()]
    headline = _select_headline(summary, headline, shown)
    groups = comparable_groups(store, refs)
    scores = Scores(with_overhead)
    quality = [m for m in dict.fromkeys([*shown, *headline]) if not is_cost(m)]
    if hacking:
        quality += [m for m in [hacking[0], *hacking[1]] if m not in quality and (summary["metric"] == m).any()]
    paired = paired_table(scores, groups, baseline, quality, label_keys, states, resampling) \
        if baseline else pd.DataFrame(columns=["cell", *label_keys, "metric", *_PAIRED])
    better = {m: higher_is_better_of(summary, m) for m in set(summary["metric"].dropna())}
    flags = reward_hacking(paired, summary, hacking[0], hacking[1], resampling.alpha) if hacking and baseline else None
    ctx = _Context({(r["cell"], r["metric"]): r for r in summary.to_dict("records")},
                   {(r["cell"], r["metric"]): r for r in paired.to_dict("records")},
                   states, better, scores, resampling, timings, flags, label_keys)
    headings = _headings([key for key, _ in groups])
    sections = [_section(ctx, heading, members, baseline, shown, headline)
                for heading, (_, members) in zip(headings, groups)]
    return ReportData(title, sections, summary, paired, df, refs, label_keys, headline, baseline,
                      resampling, timings, notes, ctx)


def _section(ctx: _Context, heading: str | None, refs: list[CellRef], baseline: str | None,
             shown: list[str], headline: list[str]) -> Section:
    keys = {r.key for r in refs}
    base = baseline if baseline in keys else None
    base_name = next((r.name(ctx.label_keys) for r in refs if r.key == base), "")
    cost = [m for m in shown if is_cost(m)]
    summary = _scores_table(ctx, refs, [*cost, *headline], "Summary: cost and headline scores", True)
    summary_paired = None if base is None else _paired_table(
        ctx, refs, base, headline, f"Paired differences against {base_name}")
    groups = []  # the cost columns are all in the summary already
    quality = [m for m in shown if not is_cost(m)]
    for name in dict.fromkeys(metric_group(m) for m in quality):
        members = [m for m in quality if metric_group(m) == name]
        paired = None if base is None else _paired_table(ctx, refs, base, members, f"{name}: Δ against {base_name}")
        groups.append((name, _scores_table(ctx, refs, members, name), paired))
    counts = sorted({int(ctx.stats[(r.key, m)]["n"]) for r in refs for m in shown
                     if (r.key, m) in ctx.stats and ctx.stats[(r.key, m)]["n"] and not m.startswith("timing.")})
    return Section(heading, refs, base, _note(counts, base is not None, ctx.resampling.alpha), summary,
                   summary_paired, groups)


def _select_metrics(summary: pd.DataFrame, wanted: list[str] | None,
                    states: dict[str, str]) -> tuple[list[str], list[str]]:
    """The table's metrics in the order asked for, and notes on outputs left out for having no values."""
    present = summary.dropna(subset=["metric"])
    known = sorted(set(present["metric"]))
    with_values = set(present.loc[present["n"] > 0, "metric"])
    if wanted is None:
        wanted = known
    chosen: list[str] = []
    empty: list[str] = []
    for name in wanted:
        found = [m for m in known if m == name or m.startswith(name + ".")]
        if not found:
            raise UsageError(f"no cell has scores for metric {name!r} (known: "
                             f"{', '.join(known) or 'none'}); fix the name or score the cells")
        if found == [name] and name not in with_values:
            cells = sorted(present.loc[present["metric"] == name, "cell"])
            raise UsageError(f"metric {name!r} has no values (NaN for every video) in cells "
                             f"{', '.join(cells)}; drop it from report.metrics or rescore those cells")
        found.sort(key=_column_order)
        chosen += [m for m in found if m not in chosen and m in with_values]
        empty += [m for m in found if m not in with_values and m not in empty]
    notes = [f"No values in any cell, not shown: {', '.join(empty)}."] if empty else []
    if not any(s == "complete" for s in states.values()):
        notes.append("No cell is complete yet.")
    return chosen, notes


def _column_order(metric: str) -> tuple[int, str]:
    """The report's own columns in the paper's order (ΔNFE, Δforwards, #Verify, ΔVAE), others by name."""
    own = [*OVERHEAD, *TIMING]
    return (own.index(metric), "") if metric in own else (len(own), metric)


def _select_headline(summary: pd.DataFrame, wanted: list[str] | None, shown: list[str]) -> list[str]:
    """The headline metrics (exact names); none asked for: the first quality metric of the table."""
    if not wanted:
        return [m for m in shown if not is_cost(m)][:1]
    with_values = set(summary.loc[summary["n"] > 0, "metric"].dropna())
    missing = [m for m in wanted if m not in with_values]
    if missing:
        raise UsageError(f"headline metric {missing[0]!r} has no values in any cell (scored: "
                         f"{', '.join(sorted(with_values)) or 'none'}); fix report.headline or score the cells")
    return list(wanted)


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
    return f"{text[:limit - 20]}… (sha256 {sha256_hex(text)[:8]})"


def _note(counts: list[int], paired: bool, alpha: float) -> str:
    if not counts:
        return "No complete cells with scores yet."
    over = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    videos = "video" if counts == [1] else "videos"
    text = (f"Mean ± {1 - alpha:.0%} CI half-width over {over} {videos} (prompts × seeds); ↑ higher is better, ↓ lower; "
            f"bold: best, and significantly ahead of every other cell (paired permutation test, p < {alpha:g} against "
            "each); ≈: tied for best (not significantly behind it).")
    if paired:
        text += (f" Δ: cell − baseline over matched (prompt, seed) pairs; *: Holm-corrected p < {alpha:g}; a Δ "
                 "without * is not shown to differ from 0, and its MDE (minimal detectable effect: the smallest true Δ "
                 f"found with 80% power at level {alpha:g}, from the spread of the differences between prompts) says "
                 "how large a difference this evaluation could have missed.")
    return text


def headline_lines(store: Store, key: str, metrics: list[str], resampling: Resampling) -> list[str]:
    """`refinery run`'s last lines: the cell's headline scores, one line per metric."""
    summary = summarize(collect(store, [CellRef(key)]), resampling).set_index("metric")
    lines = []
    for metric in metrics:
        if metric not in summary.index or not summary.loc[metric, "n"]:
            lines.append(f"  {metric}: not scored (add its metric to the run's metric config)")
            continue
        row = summary.loc[metric]
        arrow = _arrow(None if pd.isna(row["higher_is_better"]) else bool(row["higher_is_better"]))
        ci = "" if math.isnan(row["ci_low"]) else f"  95% CI [{_number(row['ci_low'])}, {_number(row['ci_high'])}]"
        lines.append(f"  {metric} {arrow}: {_number(row['mean'])}{ci}  ({row['n']} videos, {row['prompts']} prompts)")
    return lines
