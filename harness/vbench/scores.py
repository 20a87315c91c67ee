"""VBench's dimensions, its evaluation modes, its result files, and its leaderboard aggregation.

Aggregation follows VBench's leaderboard (scripts/constant.py, scripts/cal_final_score.py): each raw
dimension score is min-max normalised with fixed bounds and weighted (dynamic degree 0.5, every other
dimension 1); Quality is the weighted mean over the 7 quality dimensions, Semantic over the 9 semantic
ones, Total = (4 Quality + 1 Semantic) / 5. cal_final_score.py scores a missing dimension as 0
(below the bound, so negative after normalisation); here an incomplete set is refused instead.

A results file, `{name}_eval_results.json`, maps each evaluated dimension to
[score, [{"video_path": ..., "video_results": per-video value, ...}, ...]].
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UsageError
from harness.store.files import read_json

# The leaderboard's order (TASK_INFO): quality dimensions first.
DIMENSIONS = (
    "subject_consistency", "background_consistency", "temporal_flickering", "motion_smoothness",
    "dynamic_degree", "aesthetic_quality", "imaging_quality",
    "object_class", "multiple_objects", "human_action", "color", "spatial_relationship", "scene",
    "appearance_style", "temporal_style", "overall_consistency",
)
QUALITY = DIMENSIONS[:7]
SEMANTIC = DIMENSIONS[7:]
# (Min, Max) of NORMALIZE_DIC in VBench's scripts/constant.py
BOUNDS = {
    "subject_consistency": (0.1462, 1.0), "background_consistency": (0.2615, 1.0),
    "temporal_flickering": (0.6293, 1.0), "motion_smoothness": (0.706, 0.9975),
    "dynamic_degree": (0.0, 1.0), "aesthetic_quality": (0.0, 1.0), "imaging_quality": (0.0, 1.0),
    "object_class": (0.0, 1.0), "multiple_objects": (0.0, 1.0), "human_action": (0.0, 1.0),
    "color": (0.0, 1.0), "spatial_relationship": (0.0, 1.0), "scene": (0.0, 0.8222),
    "appearance_style": (0.0009, 0.2855), "temporal_style": (0.0, 0.364),
    "overall_consistency": (0.0, 0.364),
}
WEIGHTS = {d: 0.5 if d == "dynamic_degree" else 1.0 for d in DIMENSIONS}
QUALITY_WEIGHT, SEMANTIC_WEIGHT = 4.0, 1.0

STANDARD, CUSTOM = "vbench_standard", "custom_input"
MODES = (STANDARD, CUSTOM)
# VBench asserts these away in custom_input: they need the suite's auxiliary_info (object, colour...).
NEEDS_SUITE = ("object_class", "multiple_objects", "color", "spatial_relationship", "scene",
               "appearance_style")
# human_action passes VBench's check but reads its label from the file name, which custom names lack.
CUSTOM_DIMENSIONS = tuple(d for d in DIMENSIONS if d not in NEEDS_SUITE and d != "human_action")


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise UsageError(f"unknown vbench.mode {mode!r}; use {' or '.join(MODES)}")


def dimensions_for(mode: str, requested: list[str] | None) -> list[str]:
    """The dimensions to evaluate: `requested`, checked against the mode, or all the mode supports."""
    check_mode(mode)
    valid = DIMENSIONS if mode == STANDARD else CUSTOM_DIMENSIONS
    if not requested:
        return list(valid)
    unknown = [d for d in requested if d not in DIMENSIONS]
    if unknown:
        raise UsageError(f"unknown VBench dimension {unknown[0]!r}; known: {', '.join(DIMENSIONS)}")
    invalid = [d for d in requested if d not in valid]
    if invalid:
        raise UsageError(f"dimension {invalid[0]} is not valid in custom_input mode (it needs VBench's "
                         f"prompt suite); valid there: {', '.join(CUSTOM_DIMENSIONS)}")
    return list(dict.fromkeys(requested))


def read_full_info(path: Path) -> list[tuple[str, set[str]]]:
    """(prompt, dimensions) per entry of VBench_full_info.json, in file order."""
    if not path.is_file():
        raise UsageError(f"VBench prompt suite {path} is missing; set vbench.full_info to the "
                         "VBench_full_info.json inside the vbench package (vbench/VBench_full_info.json)")
    entries = read_json(path)
    try:
        return [(e["prompt_en"], set(e["dimension"])) for e in entries]
    except (TypeError, KeyError) as e:
        raise UsageError(f"{path} is not VBench_full_info.json (entries need prompt_en and dimension: "
                         f"{e!r}); point vbench.full_info at VBench's file") from None


# -- results files --------------------------------------------------------------------------------

@dataclass
class Results:
    scores: dict[str, float]  # VBench's score per dimension
    videos: dict[str, dict[str, list[float]]]  # dimension -> video file name -> its value(s)
    sources: dict[str, Path]  # dimension -> the file it came from


def read_results(path: Path) -> Results:
    """One `*_eval_results.json`, or every one under a folder; a dimension found twice is refused."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*_eval_results.json") if p.is_file())  # not a folder so named
        if not files:
            raise UsageError(f"{path} holds no *_eval_results.json; run `refinery vbench evaluate` first")
    elif path.is_file():
        files = [path]
    else:
        raise UsageError(f"{path} does not exist; give a VBench *_eval_results.json file or its folder")
    results = Results({}, {}, {})
    for file in files:
        for dim, entry in _results_file(file).items():
            if dim in results.sources:
                raise UsageError(f"dimension {dim} is in both {results.sources[dim]} and {file}; "
                                 "delete the one that should not count")
            results.scores[dim], results.videos[dim] = entry
            results.sources[dim] = file
    return results


def _results_file(file: Path) -> dict[str, tuple[float, dict[str, list[float]]]]:
    data = read_json(file)
    if not isinstance(data, dict):
        raise UsageError(f"{file} is not a VBench results file (expected {{dimension: [score, videos]}})")
    out = {}
    for dim, entry in data.items():
        if dim not in DIMENSIONS:
            raise UsageError(f"{file} has unknown dimension {dim!r}; known: {', '.join(DIMENSIONS)}")
        if not (isinstance(entry, list) and len(entry) == 2 and _is_number(entry[0])
                and isinstance(entry[1], list)):
            raise UsageError(f"{file}: {dim} is not [score, [per-video results]]; give VBench's "
                             "*_eval_results.json unchanged")
        out[dim] = (float(entry[0]), _per_video(file, dim, entry[1]))
    return out


def _per_video(file: Path, dim: str, entries: list) -> dict[str, list[float]]:
    values: dict[str, list[float]] = {}
    for entry in entries:
        value = entry.get("video_results") if isinstance(entry, dict) else None
        if not _is_number(value) or not isinstance(entry.get("video_path"), str):
            raise UsageError(f"{file}: a {dim} entry lacks video_path or a numeric video_results "
                             f"({str(entry)[:80]}); give VBench's *_eval_results.json unchanged")
        # VBench records the path on the machine that ran it; the file name identifies the video.
        name = entry["video_path"].replace("\\", "/").rsplit("/", 1)[-1]
        values.setdefault(name, []).append(float(value))
    return values


def _is_number(value: object) -> bool:
    # bools count: dynamic_degree and human_action give one per video
    return isinstance(value, (int, float)) and math.isfinite(value)


# -- the leaderboard's aggregation ----------------------------------------------------------------

@dataclass(frozen=True)
class Aggregate:
    dimensions: dict[str, float]  # raw scores, DIMENSIONS order
    normalized: dict[str, float]  # (raw - Min) / (Max - Min) * weight
    quality: float
    semantic: float
    total: float


def aggregate(scores: dict[str, float], source: Path | str) -> Aggregate:
    """Quality, Semantic and Total of a complete set of 16 raw scores (fractions, not percent)."""
    missing = [d for d in DIMENSIONS if d not in scores]
    if missing:
        raise UsageError(f"{source} lacks {len(missing)} of VBench's 16 dimensions ({', '.join(missing)}); "
                         "evaluate them too: Total is not defined without them")
    normalized = {d: (scores[d] - BOUNDS[d][0]) / (BOUNDS[d][1] - BOUNDS[d][0]) * WEIGHTS[d]
                  for d in DIMENSIONS}
    quality = sum(normalized[d] for d in QUALITY) / sum(WEIGHTS[d] for d in QUALITY)
    semantic = sum(normalized[d] for d in SEMANTIC) / sum(WEIGHTS[d] for d in SEMANTIC)
    total = (QUALITY_WEIGHT * quality + SEMANTIC_WEIGHT * semantic) / (QUALITY_WEIGHT + SEMANTIC_WEIGHT)
    return Aggregate({d: scores[d] for d in DIMENSIONS}, normalized, quality, semantic, total)


def format_scores(scores: dict[str, float], summary: Aggregate | None = None) -> str:
    """A table in the leaderboard's units (percent), dimensions in its order, then the totals."""
    rows = [(d.replace("_", " "), scores[d]) for d in DIMENSIONS if d in scores]
    if summary is not None:
        rows += [("Quality Score", summary.quality), ("Semantic Score", summary.semantic),
                 ("Total Score", summary.total)]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {100 * value:7.2f}%" for name, value in rows)


def to_json(summary: Aggregate) -> str:
    """Full precision, as fractions, for scripts."""
    return json.dumps({"dimensions": summary.dimensions, "normalized": summary.normalized,
                       "quality": summary.quality, "semantic": summary.semantic,
                       "total": summary.total}, indent=1)
