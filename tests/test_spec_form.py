"""One cell for one piece of work (harness.experiment.spec_form): two ways of writing the same run
give one key, specs already in normal form keep the keys main gave them, and `refinery verify`
names the duplicate cells a store made before."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from harness.experiment.pipeline import resolve_run
from harness.experiment.plans import compose
from harness.store.cells import Store, cell_key

# Keys main (e3454f4) gives these cells; the default `refinery run` cell d4b4ac009ac302d8 is also the base
# cell of training_free, table1_dmd, table2_reward and toy_models (benchmarks/RESULTS.md quotes it).
KEPT = {
    "": "d4b4ac009ac302d8",  # toy_sf with its own step list written out
    "sampler.steps=2": "c4c774535bca1e93",  # quickstart's 2-step cell, evenly spaced: timesteps null
    "sampler=ode sampler.steps=8": "db109ba65ef7a1f4",
    "experiment=toy_models model=toy_sf sampler=ode": "f0b04fa784503bb7",
    "model=toy_flow": "bd3c93da60f87365",  # a model without a default list: evenly spaced is null
    "model=toy_causvid": "d3101a9f61df57e1",  # a list that is not evenly spaced stays written out
}
# The same work written another way, and the cell it is: on main these were cells of their own.
MERGED = {
    "sampler.steps=4": "",  # quickstart's base cell: 4 evenly spaced steps are toy_sf's own list
    "sampler=ode sampler.steps=4": "experiment=toy_models model=toy_sf sampler=ode",
    "model=toy_flow sampler.timesteps=[1000,750,500,250]": "model=toy_flow",
}


def _key(overrides: str, store: Path) -> str:
    return resolve_run(compose([*overrides.split(), f"paths.store={store}"])).key


@pytest.mark.parametrize("overrides", list(KEPT))
def test_specs_in_normal_form_keep_their_keys(overrides, tmp_path):
    assert _key(overrides, tmp_path) == KEPT[overrides]


@pytest.mark.parametrize("overrides", list(MERGED))
def test_the_same_work_written_another_way_is_the_same_cell(overrides, tmp_path):
    assert _key(overrides, tmp_path) == KEPT[MERGED[overrides]]


def _old_form(spec: dict) -> dict:
    """The spec as main wrote it for the same work with the step list written the other way."""
    old = copy.deepcopy(spec)
    s = old["sampler"]
    s["timesteps"] = None if s["timesteps"] else [1000.0 * (1 - i / s["steps"]) for i in range(s["steps"])]
    return old


def test_verify_names_each_duplicate_with_the_command_that_removes_it(tmp_path, capsys):
    from harness.api import verify

    store = Store(tmp_path)
    spec = resolve_run(compose(["sampler.steps=2", f"paths.store={tmp_path}"])).spec
    normal, old = store.cell(cell_key(spec)), store.cell(cell_key(_old_form(spec)))
    assert normal.key != old.key
    for cell, written in ((normal, spec), (old, _old_form(spec))):
        cell.path.mkdir(parents=True)
        cell.write_spec(written)
    normal.set_status("complete")
    other_suite = store.cell(cell_key({**spec, "suite": {**spec["suite"], "name": "renamed"}}))
    other_suite.path.mkdir(parents=True)
    other_suite.write_spec({**spec, "suite": {**spec["suite"], "name": "renamed"}})

    verify([f"paths.store={tmp_path}"])
    lines = capsys.readouterr().out.splitlines()
    duplicate = [line for line in lines if line.startswith(f"cell {old.key} holds the same work as cell {normal.key}")]
    assert len(duplicate) == 1 and duplicate[0].endswith(f"remove it with `rm -r {old.path}`")
    assert any("'renamed'" in line and "other suite names" in line for line in lines)
    assert "3 duplicates" not in lines[-1] and "2 duplicates (listed above)" in lines[-1]

    import shutil
    shutil.rmtree(old.path)
    shutil.rmtree(other_suite.path)
    verify([f"paths.store={tmp_path}"])
    assert "duplicate" not in capsys.readouterr().out


def test_verify_says_to_finish_the_kept_cell_before_removing_the_other(tmp_path, capsys):
    from harness.api import verify

    store = Store(tmp_path)
    spec = resolve_run(compose([f"paths.store={tmp_path}"])).spec  # toy_sf's own list: written out
    for written in (spec, _old_form(spec)):
        store.cell(cell_key(written)).path.mkdir(parents=True)
        store.cell(cell_key(written)).write_spec(written)
    verify([f"paths.store={tmp_path}"])
    line = next(line for line in capsys.readouterr().out.splitlines() if "holds the same work" in line)
    assert line.startswith(f"cell {cell_key(_old_form(spec))} holds the same work as cell {cell_key(spec)}")
    assert "finish it first" in line
