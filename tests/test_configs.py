"""Every config composes and resolves; every registry entry resolves; importing the harness stays light."""
import subprocess
import sys

import pytest

from conftest import ROOT
from harness.cli import CONFIG_DIR, GROUPS, compose, sweep_points
from harness.pipeline import resolve_run
from harness.registry import METHODS, METRICS, MODELS


def options(group):
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS if g != "experiment" for o in options(g)])
def test_every_group_option_composes_and_resolves(group, option):
    cfg = compose([f"{group}={option}"])
    run = resolve_run(cfg)
    assert run.prompts and run.seeds and len(run.key) == 16


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_expands_into_valid_cells(experiment):
    points = sweep_points([f"experiment={experiment}"])
    keys = {resolve_run(cfg).key for _, cfg in points}
    assert len(keys) == len(points)  # every swept setting is a distinct cell
    assert all(cfg.experiment == experiment for _, cfg in points)


@pytest.mark.parametrize("registry", [MODELS, METHODS, METRICS], ids=lambda r: r.kind)
def test_every_registry_entry_resolves(registry):
    for name in registry.names():
        assert registry.get(name) is not None


def test_importing_the_harness_does_not_import_torch():
    code = "import sys, harness.registry, harness.errors, harness.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
