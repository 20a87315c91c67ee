"""Where a shipped asset lies: the top-level `assets` package (its docstring lists the folders), next
to `harness` in a checkout and in an installed package alike."""
from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def asset(kind: str, *name: str) -> Path:
    """The shipped file `name` of one kind: models, verifiers, world or methods (methods/<model>/<file>)."""
    return ASSETS.joinpath(kind, *name)
