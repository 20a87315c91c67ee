"""Where the files that travel with Refinery lie: shipped weights (assets/), the Hydra config tree
(sweeps/) and the report templates (reports/templates/).

In a checkout (and an editable install) they are the top-level folders beside `harness`; a wheel
carries them as package data under harness/_data/ (pyproject.toml), never as importable packages.
assets/README.md lists the shipped files.
"""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent  # the repository root, where the folders are in a checkout


def _data(name: str) -> Path:
    packaged = HERE / "_data" / name
    return packaged if packaged.is_dir() else CHECKOUT / name


ASSETS = _data("assets")
CONFIG_DIR = _data("sweeps")
TEMPLATES = _data("templates") if (HERE / "_data").is_dir() else CHECKOUT / "reports" / "templates"


def asset(kind: str, *name: str) -> Path:
    """The shipped file `name` of one kind: models, verifiers, world or methods (methods/<model>/<file>)."""
    return ASSETS.joinpath(kind, *name)
