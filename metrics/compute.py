"""Compute spent per video, as the rollout's ledger recorded it.

The figures are counted during generation (function evaluations, cache passes, refiner and verifier
calls, decodes, time, memory), so this metric only passes them through, one value per video.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from harness.errors import UsageError
from harness.engine.metric import Metric, VideoBatch

LEDGER_KEYS: tuple[str, ...] = (
    "nfe", "cache_passes", "refiner_calls", "verifier_calls",
    "decodes", "wall_seconds", "peak_memory_mb", "fps",
)


def _video_label(record: dict[str, Any], position: int) -> str:
    """A name for the video in error messages: its index in the cell (records carry it)."""
    return f"video {record.get('index', f'#{position} of the batch')}"


def _figure(value: Any) -> float:
    """A ledger figure as a float; None (e.g. no GPU memory figure on CPU) becomes NaN."""
    return float("nan") if value is None else float(value)


class Compute(Metric):
    name: ClassVar[str] = "compute"
    version: ClassVar[str] = "1"
    # Less compute is better; throughput (fps) is the exception.
    higher_is_better: ClassVar[dict[str, bool]] = {k: k == "fps" for k in LEDGER_KEYS}
    description: ClassVar[str] = (
        "Per-video compute from the rollout's ledger, passed through: nfe, cache_passes, "
        "refiner_calls, verifier_calls, decodes, wall_seconds, peak_memory_mb, fps."
    )
    needs: ClassVar[tuple[str, ...]] = ("ledger",)

    def score(self, batch: VideoBatch) -> dict[str, np.ndarray]:
        ledgers = [self._ledger(record, i) for i, record in enumerate(batch.records)]
        return {k: np.array([_figure(ledger[k]) for ledger in ledgers]) for k in LEDGER_KEYS}

    @staticmethod
    def _ledger(record: dict[str, Any], index: int) -> dict[str, Any]:
        ledger = record.get("ledger")
        label = _video_label(record, index)
        if not isinstance(ledger, dict):
            raise UsageError(
                f"compute: {label} has no ledger; rescore videos written by a rollout that "
                "records one, or drop the compute metric"
            )
        missing = [k for k in LEDGER_KEYS if k not in ledger]
        if missing:
            raise UsageError(f"compute: the ledger of {label} lacks {', '.join(missing)}")
        return ledger
