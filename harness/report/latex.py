"""LaTeX (booktabs) tables: a report's summary, or a paper's layout given as data in the experiment's
`report.latex` block (column groups with their metrics and headers, row names), as in the AutoRefiner
paper's Tables 1 and 2. Bold only where the best is significantly ahead (the report's rule)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.errors import UsageError

if TYPE_CHECKING:
    from harness.report.tables import ReportData, Table

_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
            "Δ": r"$\Delta$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "±": r"$\pm$", "≈": r"$\approx$",
            "÷": r"$\div$", "×": r"$\times$", "−": "-", "—": "---", "–": "--", "τ": r"$\tau$", "<": r"$<$",
            ">": r"$>$"}


def tex(text: str) -> str:
    """Plain text (prompts, labels, config strings) as LaTeX that prints it literally."""
    return "".join(_SPECIAL.get(ch, ch) for ch in str(text))


def booktabs(caption: str, row_header: str, groups: list[tuple[str, list[str]]],
             rows: list[tuple[str, list[str]]]) -> str:
    """A booktabs table: `groups` (header, column headers) become a two-level header where any group
    has a name; cells are LaTeX already."""
    widths = [len(cols) for _, cols in groups]
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\begin{tabular}{l" + "".join("r" * w for w in widths) + "}", r"\toprule"]
    if any(name for name, _ in groups):
        top, rules, start = [""], [], 2
        for (name, cols), width in zip(groups, widths):
            top.append(rf"\multicolumn{{{width}}}{{c}}{{{tex(name)}}}" if width > 1 else tex(name))
            if name:
                rules.append(rf"\cmidrule(lr){{{start}-{start + width - 1}}}")
            start += width
        lines += [" & ".join(top) + r" \\", " ".join(rules)]
    lines.append(" & ".join([tex(row_header), *(tex(c) for _, cols in groups for c in cols)]) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join([tex(name), *cells]) + r" \\" for name, cells in rows]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{tex(caption)}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def latex_entry(text: str, mark: str) -> str:
    """'0.774 ± 0.050' -> 0.774 with the CI half-width in small type; marks as the report's."""
    mean, _, half = text.partition(" ± ")
    body = tex(mean) + (rf"{{\scriptsize$\pm${tex(half)}}}" if half else "")
    if mark == "best":
        return rf"\textbf{{{body}}}"
    if mark == "tie":
        return body + r"$^{\approx}$"
    return rf"\textit{{{body}}}" if mark in ("missing", "running", "failed") else body


def report_latex(report: "ReportData", layout: dict[str, Any] | None) -> str:
    """One table per comparable group: the report's summary columns, or `layout`'s."""
    caption_note = ("Mean and 95% CI half-width (bootstrap over prompts); bold: best and significantly "
                    "ahead of every other row (paired); ≈: tied for best.")
    parts = []
    for section in report.sections:
        if layout:
            groups, table = _layout_table(report, section.refs, layout)
            names = dict(layout.get("rows") or {})
            caption = f"{layout.get('caption') or report.title}. {caption_note}"
        else:
            table = section.summary
            groups = [(name, [c.title for c in table.columns if c.group == name])
                      for name in dict.fromkeys(c.group for c in table.columns)]
            names, caption = {}, f"{report.title}. {caption_note}"
        if section.heading:
            caption += f" {section.heading}."
        parts.append(booktabs(caption, layout.get("row_header", "Method") if layout else "Method", groups,
                              _rows(table, names)))
    return "\n".join(parts)


def _layout_table(report: "ReportData", refs: list, layout: dict[str, Any]) -> tuple[list, "Table"]:
    """Validate a paper layout against the report's metrics and build its table."""
    groups = list(layout.get("groups") or [])
    if not groups:
        raise UsageError("report.latex needs groups: [{name: ..., columns: {metric: header, ...}}, ...]; "
                         "see sweeps/experiment/table2_reward.yaml")
    known = set(report.summary["metric"].dropna())
    timing = {"timing.fps", "timing.fps_vs_base"}
    metrics = [m for g in groups for m in g["columns"]]
    unknown = [m for m in metrics if m not in known and m not in timing]
    if unknown:
        raise UsageError(f"report.latex names metric {unknown[0]!r}, which no cell has; fix the layout "
                         "or add the metric to report.metrics")
    headers = [(g.get("name", ""), list(g["columns"].values())) for g in groups]
    return headers, report.table(refs, metrics, "latex")


def _rows(table: "Table", names: dict[str, str]) -> list[tuple[str, list[str]]]:
    rows = []
    for row in table.rows:
        label = ", ".join(v for v in row.labels if v) or row.cell
        rows.append((names.get(label, label), [latex_entry(e.text, e.mark) for e in row.entries]))
    return rows
