"""Prompt alignment on the shapes world, read from pixels by the world oracle.

Per video, 1 or 0 for each dimension: the prompted colours, shapes, object count and motion were
(or were not) read back; "object" asks for the right (colour, shape) pairs. Means over videos are
accuracies. Object persistence: `persistence`, the share of frames that show every prompted object
(two objects merged into one detection count for both), and `persistent`, 1 if that share is at
least 0.98 (every frame of a 21-frame video): a blank video, or one that loses an object for good or
for a frame, is what a few-step AR model gets wrong first. The oracle is classical image processing
(harness/world/oracle.py): no learned weights, and deliberately independent of anything a method
could optimise against.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from harness.errors import UsageError
from harness.world.grammar import Scene, parse
from harness.world.oracle import Detection, Reading, judge, read_video
from harness.engine.metric import Metric, VideoBatch

DIMENSIONS = ("colour", "shape", "count", "motion", "object", "persistence", "persistent")
MERGED_AREA = 1.4  # a detection this many times an object's median area is a merge (the oracle's rule)
PERSISTENT_SHARE = 0.98  # a video persists when at least this share of its frames shows every object


class WorldAlignment(Metric):
    name = "world_alignment"
    version = "2"
    higher_is_better: ClassVar[dict[str, bool]] = {k: True for k in DIMENSIONS}
    description = ("oracle-read colour / shape / count / motion / object agreement with the prompt (0 or 1 per "
                   "video); persistence: share of frames showing every prompted object, persistent: >= 0.98")
    needs = ("prompt",)

    @classmethod
    def check_prompts(cls, prompts: list[str]) -> None:
        check_world_prompts(cls.name, prompts)

    def score(self, batch: VideoBatch) -> dict[str, np.ndarray]:
        verdicts = [verdict(parse(r["prompt"]), read_video(v)) for v, r in zip(batch.videos, batch.records)]
        return {k: np.array([v[k] for v in verdicts]) for k in DIMENSIONS}


def verdict(scene: Scene, reading: Reading) -> dict[str, float]:
    """The judge's 0/1 per attribute and the video's object persistence."""
    share = object_persistence(reading, len(scene.objects))
    return {**judge(scene, reading), "persistence": share, "persistent": float(share >= PERSISTENT_SHARE)}


def check_world_prompts(metric: str, prompts: list[str]) -> None:
    """The shapes world's metrics read prompts in its grammar; refuse others before any compute."""
    for prompt in prompts:
        try:
            parse(prompt)
        except UsageError:
            raise UsageError(f"metric {metric!r} scores shapes-world prompts only, and {prompt!r} is not one; "
                             f"score this suite without it (`~metric.{metric}`, or metric=real)") from None


def filled(track: np.ndarray) -> np.ndarray:
    """(F, 2) centroids with unseen frames interpolated and the ends held (np.interp's edges)."""
    t = np.flatnonzero(~np.isnan(track[:, 0]))
    frames = np.arange(len(track))
    return np.stack([np.interp(frames, t, track[t, k]) for k in range(2)], axis=1)


def subject_sightings(reading: Reading) -> list[dict[int, Detection]]:
    """Each tracked object's detection per frame where it is seen. Where the tracker lost the object
    (a jump past its gate), the frame's unclaimed detection of the object's colour (its shape first)
    nearest its interpolated position stands in: identity by appearance, as VBench's features see a
    subject."""
    guesses = [filled(xy) for xy in reading.tracks]
    found: list[dict[int, Detection]] = [{} for _ in reading.tracks]
    for f, detections in enumerate(reading.frames):
        free = list(detections)
        for seen, xy in zip(found, reading.tracks):
            mine = [d for d in free if (d.x, d.y) == (xy[f, 0], xy[f, 1])]
            if mine:
                seen[f] = mine[0]
                free.remove(mine[0])
        for seen, guess, (colour, shape) in zip(found, guesses, reading.objects):
            candidates = [d for d in free if d.colour == colour]
            if f in seen or not candidates:
                continue
            seen[f] = min(candidates, key=lambda d: (d.shape != shape, np.hypot(d.x - guess[f, 0], d.y - guess[f, 1])))
            free.remove(seen[f])
    return found


def merged_frames(seen: dict[int, Detection]) -> set[int]:
    """Frames where an object's detection is over MERGED_AREA times its median area: two objects merged."""
    typical = float(np.median([d.area for d in seen.values()])) if seen else 0.0
    return {f for f, d in seen.items() if d.area > MERGED_AREA * typical}


def object_persistence(reading: Reading, wanted: int) -> float:
    """The share of frames that show every prompted object (`wanted` of them): objects sighted in the
    frame, a merged detection counting for the two objects it holds (two objects of one colour that
    cross). A video that goes blank, or loses an object for good or for a while, scores below 1."""
    shown = np.zeros(len(reading.frames))
    for seen in subject_sightings(reading):
        merged = merged_frames(seen)
        for f in seen:
            shown[f] += 2 if f in merged else 1
    return float(np.mean(shown >= wanted))
