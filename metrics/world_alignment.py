"""Prompt alignment on the shapes world, read from pixels by the world oracle.

Per video, 1 or 0 for each dimension: the prompted colours, shapes, object count and motion were
(or were not) read back; "object" asks for the right (colour, shape) pairs. Means over videos are
accuracies. The oracle is classical image processing (harness/world/oracle.py): no learned weights,
and deliberately independent of anything a method could optimise against.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from harness.errors import UsageError
from harness.world.grammar import parse
from harness.world.oracle import judge, read_video
from metrics.base import Metric, VideoBatch

DIMENSIONS = ("colour", "shape", "count", "motion", "object")


class WorldAlignment(Metric):
    name = "world_alignment"
    version = "1"
    higher_is_better: ClassVar[dict[str, bool]] = {k: True for k in DIMENSIONS}
    description = "oracle-read colour / shape / count / motion / object agreement with the prompt (0 or 1 per video)"
    needs = ("prompt",)

    @classmethod
    def check_prompts(cls, prompts: list[str]) -> None:
        check_world_prompts(cls.name, prompts)

    def score(self, batch: VideoBatch) -> dict[str, np.ndarray]:
        verdicts = [judge(parse(r["prompt"]), read_video(v)) for v, r in zip(batch.videos, batch.records)]
        return {k: np.array([v[k] for v in verdicts]) for k in DIMENSIONS}


def check_world_prompts(metric: str, prompts: list[str]) -> None:
    """The shapes world's metrics read prompts in its grammar; refuse others before any compute."""
    for prompt in prompts:
        try:
            parse(prompt)
        except UsageError:
            raise UsageError(f"metric {metric!r} scores shapes-world prompts only, and {prompt!r} is not one; "
                             f"score this suite without it (`~metric.{metric}`, or metric=real)") from None
