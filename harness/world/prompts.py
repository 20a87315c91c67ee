"""The frozen prompt sets: training prompts, and held-out evaluation prompts tagged with what they test.

The split is a fixed, seeded draw over every prompt the grammar allows; `write_frozen_sets` produced
the files under prompts/ once, and tests check that the files still match the draw and that no
evaluation prompt is a training prompt. Evaluation prompts never reach training, so scores measure
composition, not memory.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.world.grammar import MOTIONS, Scene, all_scenes

PROMPT_DIR = Path(__file__).parent / "prompts"
HELD_OUT_SINGLES_PER_MOTION = 2
HELD_OUT_PAIRS_PER_MOTION = 4


@dataclass(frozen=True)
class EvalPrompt:
    text: str
    tags: tuple[str, ...]  # the dimensions this prompt tests: colour, shape, count, motion


def split_scenes(seed: int = 20261121) -> tuple[list[Scene], list[Scene]]:
    """(train, eval): per motion, a seeded choice of held-out single- and two-object scenes."""
    rng = np.random.default_rng(seed)
    held = []
    for motion in MOTIONS:
        singles = [s for s in all_scenes() if s.motion == motion and len(s.objects) == 1]
        pairs = [s for s in all_scenes() if s.motion == motion and len(s.objects) == 2]
        held += [singles[i] for i in rng.choice(len(singles), HELD_OUT_SINGLES_PER_MOTION, replace=False)]
        held += [pairs[i] for i in rng.choice(len(pairs), HELD_OUT_PAIRS_PER_MOTION, replace=False)]
    held_set = set(held)
    return [s for s in all_scenes() if s not in held_set], held


def tags_for(scene: Scene) -> tuple[str, ...]:
    """Like VBench's per-dimension prompt lists: two-object prompts also test the object count."""
    return ("colour", "shape", "motion") + (("count",) if len(scene.objects) == 2 else ())


def write_frozen_sets(folder: Path = PROMPT_DIR) -> None:
    train, held = split_scenes()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.txt").write_text("".join(s.text + "\n" for s in train))
    rows = [{"prompt": s.text, "tags": list(tags_for(s))} for s in held]
    (folder / "eval.json").write_text(json.dumps(rows, indent=1) + "\n")


def train_prompts() -> list[str]:
    return (PROMPT_DIR / "train.txt").read_text().splitlines()


def eval_prompts() -> list[EvalPrompt]:
    rows = json.loads((PROMPT_DIR / "eval.json").read_text())
    return [EvalPrompt(r["prompt"], tuple(r["tags"])) for r in rows]
