"""report.md and the leaderboard's Markdown: tables with every config-derived string escaped."""
from __future__ import annotations

import html

from harness.report.tables import Entry, ReportData, Table
from harness.report.timing import timing_note


def _md(text: str) -> str:
    # config strings may hold markup: escape it, and keep '|' and newlines from breaking the row
    return html.escape(str(text)).replace("|", "\\|").replace("\n", " ")


def _md_entry(entry: Entry) -> str:
    text = _md(entry.text)
    if entry.mark == "best" or entry.mark == "flag":
        return f"**{text}**"
    return f"{text} ≈" if entry.mark == "tie" else text


def markdown_table(table: Table, with_cell: bool = True) -> list[str]:
    header = [*table.label_keys, *(c.full for c in table.columns), *(["state", "cell"] if with_cell else [])]
    lines = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + " --- |" * len(header)]
    for row in table.rows:
        cells = [_md(v) for v in row.labels] + [_md_entry(e) for e in row.entries]
        cells += [_md(row.state), _md(row.cell)] if with_cell else []
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(report: ReportData, figures: list) -> str:
    lines = [f"# {_md(report.title)}", "", _md(report.resampling.describe()), ""]
    lines += [_md(n) for n in report.notes] + ([""] if report.notes else [])
    if report.timings:
        lines += [_md(timing_note(report.timings)), ""]
    for section in report.sections:
        if section.heading:
            lines += [f"## {_md(section.heading)}", ""]
        lines += [_md(section.note), "", f"### {_md(section.summary.caption)}", "",
                  *markdown_table(section.summary), ""]
        if section.summary_paired is not None:
            lines += [f"### {_md(section.summary_paired.caption)}", "", *markdown_table(section.summary_paired), ""]
        for name, table, paired in section.groups:
            lines += [f"### {_md(name)}", "", *markdown_table(table), ""]
            if paired is not None:
                lines += [*markdown_table(paired), ""]
    lines += [f"![{_md(f.caption)}]({f.file})" for f in figures]
    if not figures:
        lines.append("_No figure: no complete cell has both a cost and a headline score._")
    return "\n".join(lines) + "\n"
