"""Cost against quality: one figure per headline metric.

Left panel: the metric against NFE per video (counted by the ledger); right panel, where a timing pass
ran: against time per video relative to the baseline, from the timing pass (harness.report.timing), never
from generation wall time (without one the caption says how to run it). One colour and one legend entry per method (the labels that are not a swept number); points of
a method are joined along its swept numeric axis (steps, n, τ, ...); error bars are the 95% CIs (the
timing's are the range of its pairwise ratios); the dashed line is the Pareto front (no other cell is
both cheaper and better).
"""
from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.store.cells import CellRef
    from harness.report.tables import ReportData

NFE = "compute.nfe"
_PLACEHOLDERS = ("", "—")


@dataclass
class Figure:
    metric: str
    file: str
    caption: str
    png: bytes


@dataclass
class _Point:
    ref: "CellRef"
    series: str
    axis: float | None  # the swept number that orders the points of a series
    y: float
    y_err: tuple[float, float]
    nfe: float | None
    time: tuple[float, float, float] | None  # time ÷ base and its range


def cost_quality_figures(report: "ReportData") -> list[Figure]:
    figures = []
    for metric in report.headline:
        panels = [(s.heading, _points(report, s.refs, metric)) for s in report.sections]
        panels = [(h, pts) for h, pts in panels if pts]
        if not panels:
            continue
        arrow = {True: " ↑", False: " ↓", None: ""}[report.context.better.get(metric)]
        timed = any(p.time for _, pts in panels for p in pts)
        png = _plot(panels, f"{metric}{arrow}", report.context.better.get(metric) is not False,
                    report.baseline, timed)
        figures.append(Figure(metric, f"figure-{re.sub(r'[^A-Za-z0-9_.-]', '_', metric)}.png",
                              _caption(metric, timed), png))
    return figures


def _caption(metric: str, timed: bool) -> str:
    if timed:
        return (f"{metric} against NFE per video and against time per video ÷ baseline (timing pass); "
                "bars: 95% CI; dashed: Pareto front")
    return (f"{metric} against NFE per video; bars: 95% CI; dashed: Pareto front. FPS and time ÷ baseline: "
            "`refinery bench` with the same overrides (or report.timing=true)")


def _axis_and_series(refs: list["CellRef"], label_keys: list[str]) -> tuple[str | None, list[str]]:
    """The swept numeric label (the first varying label whose values are all numbers) and the labels
    that name a series (the other varying ones)."""
    varying = [k for k in label_keys if len({r.labels.get(k, "") for r in refs}) > 1]
    for key in varying:
        values = [r.labels.get(k, "") for r in refs for k in [key] if r.labels.get(k, "") not in _PLACEHOLDERS]
        if values and all(_number(v) is not None for v in values) and len(set(values)) > 1:
            return key, [k for k in varying if k != key]
    return None, varying


def _series_name(ref: "CellRef", keys: list[str]) -> str:
    if len(keys) == 1:
        return ref.labels.get(keys[0], "—")
    return ref.name(keys) if keys else ref.name()


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _points(report: "ReportData", refs: list["CellRef"], metric: str) -> list[_Point]:
    ctx = report.context
    axis, series_keys = _axis_and_series(refs, report.label_keys)
    points = []
    for ref in refs:
        stat = ctx.stats.get((ref.key, metric))
        if ctx.states[ref.key] != "complete" or stat is None or not stat["n"]:
            continue
        nfe = ctx.stats.get((ref.key, NFE))
        low, high = stat["ci_low"], stat["ci_high"]
        # the percentile CI need not contain the mean for tiny n; error bars cannot be negative
        err = (0.0, 0.0) if math.isnan(low) else (max(stat["mean"] - low, 0.0), max(high - stat["mean"], 0.0))
        points.append(_Point(ref, _series_name(ref, series_keys),
                             _number(ref.labels.get(axis, "")) if axis else None, stat["mean"], err,
                             nfe["mean"] if nfe and nfe["n"] else None, _time(report, ref.key)))
    return points


def _time(report: "ReportData", cell: str) -> tuple[float, float, float] | None:
    if cell == report.baseline and report.timings:
        return 1.0, 1.0, 1.0
    timing = report.timings.get(cell)
    if timing is None:
        return None
    return 1 / timing.ratio, 1 / timing.ratio_high, 1 / timing.ratio_low


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool) -> list[tuple[float, float]]:
    """The points no other point beats on both cost (lower) and quality, by increasing cost."""
    front: list[tuple[float, float]] = []
    sign = 1.0 if higher_is_better else -1.0
    for x, y in sorted(points, key=lambda p: (p[0], -sign * p[1])):
        if not front or sign * y > sign * front[-1][1]:
            front.append((x, y))
    return front


PARETO_STYLE = {"ls": "--", "color": "0.2", "lw": 1.4}  # dark: drawn over the series' lines
PANEL_INCHES, LEGEND_INCHES, DPI = 4.6, 2.2, 110


def _plot(panels: list, ylabel: str, higher_is_better: bool, baseline: str | None, timed: bool) -> bytes:
    """One row per section: cost in NFE and, where a timing pass ran, time ÷ baseline; the legend
    beside the top row, framed, so it reads against any background."""
    # the Agg canvas directly, so that a report never touches pyplot's global backend state
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure
    from matplotlib.lines import Line2D

    names = list(dict.fromkeys(p.series for _, pts in panels for p in pts))
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    colours = {name: cmap(i % cmap.N) for i, name in enumerate(names)}
    columns = 2 if timed else 1
    fig = MplFigure(figsize=(PANEL_INCHES * columns + LEGEND_INCHES, 3.9 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), columns, squeeze=False)
    for (heading, points), row in zip(panels, axes):
        _panel(row[0], [(p, p.nfe, None) for p in points if p.nfe is not None], colours, higher_is_better,
               baseline, "NFE per video (ledger)")
        if timed:
            timed_points = [(p, p.time[0], (p.time[0] - p.time[1], p.time[2] - p.time[0])) for p in points if p.time]
            if timed_points:
                _panel(row[1], timed_points, colours, higher_is_better, baseline,
                       "time per video ÷ baseline (timing pass)")
            else:  # a section the timing pass did not reach: nothing to draw
                row[1].set_axis_off()
        for ax in row:
            if heading:
                ax.set_title(heading[:90], fontsize=8, parse_math=False)
        row[0].set_ylabel(ylabel)
    handles = [Line2D([], [], marker="o", color=colours[n], label=n) for n in names]
    handles.append(Line2D([], [], label="Pareto front", **PARETO_STYLE))
    if baseline:
        handles.append(Line2D([], [], marker="o", ls="none", mfc="none", mec="black", ms=11, label="baseline"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=9, frameon=True, framealpha=1.0,
               facecolor="white", edgecolor="0.6", handlelength=2.6)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _panel(ax, points: list, colours: dict, higher_is_better: bool, baseline: str | None, xlabel: str) -> None:
    """One panel: a series' points joined along its swept axis, each point with its error bars."""
    from matplotlib.transforms import offset_copy

    shift = _dodge(points, colours)
    by_series: dict[str, list] = {}
    for point, x, x_err in points:
        by_series.setdefault(point.series, []).append((point, x, x_err))
    for name, members in by_series.items():
        members.sort(key=lambda m: (m[0].axis if m[0].axis is not None else m[1]))
        if members[0][0].axis is not None and len(members) > 1:
            ax.plot([m[1] for m in members], [m[0].y for m in members], "-", color=colours[name], lw=1.2)
    for point, x, x_err in points:
        moved = offset_copy(ax.transData, fig=ax.figure, x=shift[id(point)], units="points")
        ax.errorbar([x], [point.y], yerr=[[point.y_err[0]], [point.y_err[1]]],
                    xerr=None if x_err is None else [[x_err[0]], [x_err[1]]], fmt="o", color=colours[point.series],
                    capsize=3, ms=5, elinewidth=0.9, transform=moved)
        if point.ref.key == baseline:
            ax.plot([x], [point.y], "o", mfc="none", mec="black", ms=11, zorder=5, transform=moved)
        # artists drawn through an offset transform do not count for autoscaling: their extent does
        ax.update_datalim([(x - (x_err[0] if x_err else 0), point.y - point.y_err[0]),
                           (x + (x_err[1] if x_err else 0), point.y + point.y_err[1])])
    front = pareto_front([(x, p.y) for p, x, _ in points], higher_is_better)
    if len(front) > 1:
        ax.step([x for x, _ in front], [y for _, y in front], where="post", zorder=2.5, **PARETO_STYLE)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    ax.margins(x=0.08, y=0.08)
    ax.autoscale_view()


def _dodge(points: list, colours: dict) -> dict[int, float]:
    """Screen offsets (points) for points at the same cost (e.g. two samplers at one NFE), so that
    their error bars do not hide each other; points alone at their cost stay where they are."""
    at: dict[float, list] = {}
    for point, x, _ in points:
        at.setdefault(round(x, 9), []).append(point)
    order = list(colours)
    shift = {}
    for group in at.values():
        group.sort(key=lambda p: order.index(p.series))
        for j, point in enumerate(group):
            shift[id(point)] = 4.0 * (j - (len(group) - 1) / 2)
    return shift
