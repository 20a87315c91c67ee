"""Cells written by hand into a store: chosen scores per video, small videos, a spec with suite, seeds
and model, so report, leaderboard and browser tests control every number they check."""
from __future__ import annotations

import numpy as np

from harness.store.cells import CellRef
from harness.store.cells import Store

PROMPTS = [f"<b>p{i}</b>" for i in range(8)]  # markup: it must print as text everywhere


def video(seed: int, frames: int = 6, size: int = 8) -> np.ndarray:
    """A small moving square, different per seed."""
    out = np.zeros((frames, size, size, 3), np.uint8)
    for f in range(frames):
        x = (seed + f) % (size - 2)
        out[f, 2:5, x:x + 2] = (40 * (seed % 6) + 30, 200, 90)
    return out


def write_cell(store: Store, key: str, scores: dict[str, list[float]] | None = None, *,
               higher_is_better: dict[str, bool] | None = None, prompts: list[str] = PROMPTS,
               seeds: tuple[int, ...] = (0, 1), state: str = "complete", suite_version: int = 1,
               digest: str = "d1", nfe: float = 28.0, labels: dict[str, str] | None = None) -> CellRef:
    """A cell of len(prompts) × len(seeds) videos (prompt-major); `scores` maps "metric.output" to one
    value per video. Every cell also gets compute counts (nfe, cache passes, decodes...)."""
    cell = store.cell(key)
    cell.write_spec({"model": {"name": "toy", "digest": digest, "num_chunks": 7}, "method": {"name": key},
                     "suite": {"name": "world_eval", "version": suite_version, "prompts": list(prompts)},
                     "seeds": list(seeds)})
    items = [(p, s) for p in prompts for s in seeds]
    if state == "complete":
        for i, (prompt, seed) in enumerate(items):
            cell.write_video(i, video(i), {"index": i, "prompt": prompt, "seed": seed})
        by_metric: dict[str, dict[str, list[float]]] = {}
        for name, values in (scores or {}).items():
            metric, output = name.split(".", 1)
            by_metric.setdefault(metric, {})[output] = list(values)
        counts = {"nfe": nfe, "cache_passes": 6.0, "verifier_calls": 0.0, "decodes": 7.0, "fps": 100.0}
        by_metric["compute"] = {k: [v] * len(items) for k, v in counts.items()}
        for metric, values in by_metric.items():
            better = {o: (higher_is_better or {}).get(f"{metric}.{o}", metric != "compute" or o == "fps")
                      for o in values}
            cell.write_scores(metric, {"metric": metric, "version": "1", "higher_is_better": better,
                                       "values": values, "videos": len(items)})
    cell.set_status(state, error="boom" if state == "failed" else None)
    return CellRef(key, labels if labels is not None else {"method": key})


def base_values(seed: int = 0, prompts: int = len(PROMPTS), seeds: int = 2, spread: float = 0.2) -> np.ndarray:
    """Scores with a strong per-prompt effect (prompts differ far more than seeds)."""
    rng = np.random.default_rng(seed)
    return np.repeat(rng.normal(0.5, spread, prompts), seeds) + rng.normal(0, 0.01, prompts * seeds)
