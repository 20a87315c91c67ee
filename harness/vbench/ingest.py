"""VBench's results into the store, as the score file of a metric, so reports show them.

The scores land in cells/<key>/scores/vbench.json (vbench_standard exports) or vbench_custom.json
(custom_input: other prompts and fewer dimensions, so never the same column as VBench's numbers):
one output per evaluated dimension, with VBench's per-video value for every video of the cell
(None, shown as missing, where a dimension did not read a video: in the standard suite each prompt
belongs to a few dimensions). A video listed twice (a prompt listed twice in the suite) gets the
mean of its values. VBench's own per-dimension scores, and Quality / Semantic / Total when all 16
dimensions are there, are kept beside them under "vbench".

The mean a report shows is the mean over videos; VBench's score weights some dimensions by frame
count, which equals that mean when every video has the same number of frames.
"""
from __future__ import annotations

from dataclasses import asdict

import numpy as np

from harness.errors import UsageError
from harness.store.files import read_json
from harness.store.cells import Cell, Store
from harness.vbench.export import Export
from harness.vbench.scores import DIMENSIONS, STANDARD, Results, aggregate


def metric_name(mode: str) -> str:
    return "vbench" if mode == STANDARD else "vbench_custom"


def ingest(export: Export, results: Results, store: Store) -> tuple[Cell, dict]:
    """Write the score file; returns the cell and the payload written."""
    cell = store.cell(export.cell)
    if not cell.is_complete():
        raise UsageError(f"cell {export.cell} is not complete in {store.root}; set paths.store to the store "
                         "the export came from")
    indices = cell.video_indices()
    if indices != sorted(export.videos):
        raise UsageError(f"cell {export.cell} has {len(indices)} videos but its export {export.path} has "
                         f"{len(export.videos)}; export the cell again")
    files = set(export.videos.values())
    values = {}
    for dim in (d for d in DIMENSIONS if d in results.videos):
        strangers = sorted(set(results.videos[dim]) - files)
        if strangers:
            raise UsageError(f"{results.sources[dim]}: {dim} scored {strangers[0]}, which is not in the export "
                             f"{export.path}; give the results of this export")
        per_file = {name: float(np.mean(v)) for name, v in results.videos[dim].items()}
        values[dim] = [per_file.get(export.videos[i]) for i in indices]
    if not values:
        raise UsageError(f"{', '.join(map(str, set(results.sources.values())))} holds no dimension; "
                         "give VBench's *_eval_results.json")
    name = metric_name(export.mode)
    payload = {"metric": name, "version": _version(results), "options": {"mode": export.mode},
               "higher_is_better": {dim: True for dim in values}, "values": values,
               "videos": len(indices), "vbench": _summary(results)}
    cell.write_scores(name, payload)
    return cell, payload


def _version(results: Results) -> str:
    """The vbench package version(s) from the `{name}_run.json` files the driver writes."""
    versions = set()
    for source in set(results.sources.values()):
        run = source.with_name(source.name.replace("_eval_results.json", "_run.json"))
        versions.add(read_json(run).get("vbench", "unknown") if run.is_file() else "unknown")
    return "+".join(sorted(versions))


def _summary(results: Results) -> dict:
    summary: dict = {"dimensions": dict(results.scores),
                     "sources": {d: str(p) for d, p in results.sources.items()}}
    if all(d in results.scores for d in DIMENSIONS):
        totals = asdict(aggregate(results.scores, "results"))
        summary.update({k: totals[k] for k in ("quality", "semantic", "total")})
    return summary
