"""Every config composes and resolves; every registry entry resolves; importing the harness stays light."""
import subprocess
import sys

import pytest

from conftest import ROOT
from harness.assets import CONFIG_DIR
from harness.experiment.plans import GROUPS, compose, experiment
from harness.experiment.pipeline import resolve_run
from harness.engine.registry import METHODS, METRICS, MODELS


def options(group):
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def external_files(tmp_path_factory):
    """What the options that read files outside the package need, at the tiny size: the real models'
    folders (the tiny components in their layout, on the CPU), VBench's prompt file, a prompt file."""
    import json

    from harness.models.wan_causal.loader import save_tiny

    tmp = tmp_path_factory.mktemp("external")
    paths = save_tiny(tmp, seed=0, max_tokens=512)
    real = [f"paths.weights={tmp}", "model.architecture=tiny", "model.height=32", "model.width=32",
            "model.device=cpu", "model.dtype=float32", *(f"model.{k}={v}" for k, v in paths.items())]
    (tmp / "VBench_full_info.json").write_text(json.dumps([
        {"prompt_en": "a dog running", "dimension": ["dynamic_degree"]},
        {"prompt_en": "a red car", "dimension": ["color", "object_class"]}]))
    (tmp / "prompts.txt").write_text("a cat on a sofa\n\nwaves at sunset\n")
    return {("model", "self_forcing"): real, ("model", "causvid"): real,
            ("suite", "vbench"): ["model=wan_tiny", "metric=real", f"vbench.full_info={tmp / 'VBench_full_info.json'}"],
            ("suite", "prompt_file"): ["model=wan_tiny", "metric=real", f"suite.path={tmp / 'prompts.txt'}"]}


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS if g != "experiment" for o in options(g)])
def test_every_group_option_composes_and_resolves(group, option, external_files):
    cfg = compose([f"{group}={option}", *external_files.get((group, option), [])])
    run = resolve_run(cfg)
    assert run.prompts and run.seeds and len(run.key) == 16
    if option == "vbench":  # VBench's suite: its prompts, tagged with their dimensions, 5 samples each
        assert run.prompts == ["a dog running", "a red car"] and run.tags[1] == ["color", "object_class"]
        assert len(run.seeds) == 5
    if option == "prompt_file":
        assert run.prompts == ["a cat on a sofa", "waves at sunset"]


@pytest.mark.parametrize("name", options("experiment"))
def test_every_experiment_expands_into_valid_cells(name):
    plans = experiment([f"experiment={name}"]).plans
    keys = {resolve_run(plan.cfg).key for plan in plans}
    assert len(keys) == len(plans)  # every swept setting is a distinct cell
    assert all(plan.cfg.experiment == name for plan in plans)


@pytest.mark.parametrize("registry", [MODELS, METHODS, METRICS], ids=lambda r: r.kind)
def test_every_registry_entry_resolves(registry):
    for name in registry.names():
        assert registry.get(name) is not None


def test_importing_the_harness_does_not_import_torch():
    code = "import sys, harness.engine.registry, harness.errors, harness.cli, refinery; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
