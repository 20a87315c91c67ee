"""The shapes world's prompt grammar.

    prompt := "a" COLOUR SHAPE ["and a" COLOUR SHAPE] MOTION
    MOTION := "moving left" | "moving right" | "moving up" | "moving down"
            | "bouncing" | "falling" | "standing still"

Every object of a prompt shares its motion. A prompt parses to a `Scene`, the renderer's input and the
oracle's answer key.
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.errors import UsageError

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.15, 0.15),
    "green": (0.15, 0.75, 0.20),
    "blue": (0.20, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.15),
    "purple": (0.65, 0.25, 0.85),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
MOTIONS: dict[str, str] = {  # canonical motion name -> its words in a prompt
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "bouncing": "bouncing",
    "falling": "falling",
    "still": "standing still",
}
_MOTION_BY_PHRASE = {phrase: name for name, phrase in MOTIONS.items()}
VOCABULARY: frozenset[str] = frozenset(
    ["a", "and", *COLOURS, *SHAPES, *(w for p in MOTIONS.values() for w in p.split())]
)


@dataclass(frozen=True)
class WorldObject:
    colour: str
    shape: str

    @property
    def text(self) -> str:
        return f"a {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[WorldObject, ...]
    motion: str

    @property
    def text(self) -> str:
        return " and ".join(o.text for o in self.objects) + " " + MOTIONS[self.motion]


def parse(prompt: str) -> Scene:
    """Parse a prompt; a word outside the vocabulary or a malformed phrase is a UsageError."""
    words = prompt.strip().lower().split()
    unknown = sorted({w for w in words if w not in VOCABULARY})
    if unknown:
        raise UsageError(
            f"prompt {prompt!r} has words outside the shapes world's vocabulary: {', '.join(unknown)}; "
            f"use colours {'/'.join(COLOURS)}, shapes {'/'.join(SHAPES)}, "
            f"motions {'/'.join(MOTIONS.values())}"
        )
    objects, i = [], 0
    while i + 2 < len(words) and words[i] == "a" and words[i + 1] in COLOURS and words[i + 2] in SHAPES:
        objects.append(WorldObject(words[i + 1], words[i + 2]))
        i += 3
        if words[i:i + 2] == ["and", "a"]:
            i += 1
    motion = _MOTION_BY_PHRASE.get(" ".join(words[i:]))
    if not objects or len(objects) > 2 or motion is None:
        raise UsageError(
            f"prompt {prompt!r} does not follow the grammar "
            "'a COLOUR SHAPE [and a COLOUR SHAPE] MOTION', e.g. 'a red circle bouncing'"
        )
    return Scene(tuple(objects), motion)


def all_scenes() -> list[Scene]:
    """Every prompt the grammar allows (two objects of one prompt differ in colour or shape)."""
    items = [WorldObject(c, s) for c in COLOURS for s in SHAPES]
    scenes = []
    for motion in MOTIONS:
        scenes += [Scene((o,), motion) for o in items]
        scenes += [Scene((a, b), motion) for i, a in enumerate(items) for b in items[i + 1:]]
    return scenes
