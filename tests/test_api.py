"""The experiment layer and the Python API: sweeps expand as Hydra's own sweeper expands them, plans
need no model, a report reads its cell keys from the store, `import refinery` runs a cell end to end,
every command has --help, and a plug-in from outside the repository registers a method that runs."""
import json
import subprocess
import sys
import textwrap

import pytest

from conftest import FAST, ROOT
from harness.cli import COMMANDS, main
from harness.errors import UsageError
from harness.experiment.plans import expand, experiment

CHEAP = [*FAST, "~metric.world_bench", "~metric.world_alignment", "report.metrics=[temporal_flicker,dynamics]",
         "report.headline=[dynamics.ssim]"]


@pytest.mark.parametrize("overrides", [
    ["experiment=quickstart"],
    ["experiment=bon_n", "seed=3"],
    ["method=bon,sop", "sampler.steps=2,3,4", "seed=1"],
    ["experiment=pnp_tau", "method.params.tau=0.5"],  # the command line's setting beats the experiment's sweep
    ["seed=1", "experiment=quickstart", "sampler.steps=3,5"],  # the command line's sweep replaces the experiment's
])
def test_sweeps_expand_as_hydras_basic_sweeper_expands_them(overrides):
    """Reference: hydra's BasicSweeper.split_arguments over the same overrides (the experiment's sweeper
    params first, unless the command line sets the key)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from harness.experiment.plans import compose, fixed_overrides

    parser = OverridesParser.create()
    params = compose([o for o in fixed_overrides(overrides) if o.startswith("experiment=")],
                     with_hydra=True).hydra.sweeper.params
    params = OmegaConf.to_container(params) if params else {}
    keys = {o.get_key_element() for o in parser.parse_overrides(overrides)}
    swept = [f"{k}={v}" for k, v in params.items() if k not in keys] + overrides
    reference = BasicSweeper.split_arguments(parser.parse_overrides(swept), None)[0]
    assert expand(overrides) == reference


def test_an_unbounded_sweep_is_refused():
    with pytest.raises(UsageError, match="list the values"):
        expand(["seed=range(0,10)", "sampler.steps=interval(1,4)"])


@pytest.mark.slow
def test_plans_and_a_report_need_no_model(tmp_path, monkeypatch, capsys):
    """Expanding an experiment loads nothing; after a sweep, `report` reads every cell key (the
    baseline's too) from the store, so no model, verifier or checkpoint is loaded again."""
    import harness.experiment.pipeline as pipeline

    store = [f"paths.store={tmp_path / 'runs'}", f"paths.reports={tmp_path / 'reports'}"]
    sweep = [*CHEAP, *store, "method=bon,sop", "method.params.n=2", "report.baseline='method=base'"]

    def no_model(cfg):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(pipeline, "load_model", no_model)
    plans = experiment(sweep).plans
    assert [p.labels for p in plans] == [{"method": "bon"}, {"method": "sop"}]
    monkeypatch.undo()
    assert main(["sweep", *sweep]) == 0
    monkeypatch.setattr(pipeline, "load_model", no_model)
    assert main(["report", *sweep]) == 0
    csv = next((tmp_path / "reports").glob("adhoc*/report.csv")).read_text()
    assert {"bon", "sop", "base"} <= {line.split(",")[1] for line in csv.splitlines()[1:]}


def test_a_plan_whose_weights_changed_is_resolved_again(tmp_path, monkeypatch):
    """The recorded key is only trusted while the run's weight files are unchanged (size, mtime)."""
    import os

    from harness.experiment.plans import CellPlan, compose
    from harness.experiment.needed import needed_files

    cfg = compose([*CHEAP, f"paths.store={tmp_path}"])
    plan = CellPlan([], cfg)
    before = plan.plan_id()
    weights = next(f.path for f in needed_files(cfg) if f.owner.startswith("model "))
    stat = weights.stat()
    try:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
        assert plan.plan_id() != before
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert plan.plan_id() == before


@pytest.mark.slow
def test_the_python_api_end_to_end(tmp_path, capsys):
    import refinery

    settings = [*CHEAP, f"paths.store={tmp_path / 'runs'}", f"paths.reports={tmp_path / 'reports'}"]
    scores = refinery.run(["method=bon", "method.params.n=2", *settings])
    assert set(scores.columns) >= {"cell", "video", "prompt", "seed", "metric", "value"}
    assert scores.video.nunique() == 4 and "dynamics.ssim" in set(scores.metric)
    swept = refinery.sweep(["method=sop,bon", "method.params.n=2", *settings])
    assert swept.cell.nunique() == 2 and scores.cell[0] in set(swept.cell)  # the run's cell was reused
    summary = refinery.report(["method=sop,bon", "method.params.n=2", *settings])
    assert set(summary.method) == {"sop", "bon"} and "report.html" in summary.attrs["files"]
    again = refinery.scores(["method=sop,bon", "method.params.n=2", *settings])
    assert again.equals(swept)
    assert [p.labels for p in refinery.plans(["method=sop,bon", *settings])] == [{"method": "sop"}, {"method": "bon"}]
    with pytest.raises(refinery.UsageError):
        refinery.run(["method=bnn", *settings])


def test_version_and_every_commands_help(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == "refinery 0.1.0"
    for name in COMMANDS:
        assert main([name, "--help"]) == 0, name
        out = capsys.readouterr().out
        assert out.startswith(f"usage: refinery {name}") and "example: refinery" in out, name
    main(["run", "--help"])
    out = capsys.readouterr().out
    assert "method      autorefiner, base" in out and "experiment  bon_n" in out and "sampler.steps=8" in out


def test_listing(tmp_path, capsys):
    assert main(["list", "experiments"]) == 0
    assert "quickstart" in capsys.readouterr().out
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert "self_forcing  backend wan_causal" in out and "toy" in out
    assert main(["list", "methods"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert {"autorefiner", "base", "bon", "pnp"} <= set(rows) and "refinery" in rows["bon"]
    assert main(["list", "cells", f"paths.store={tmp_path}"]) == 0
    assert "no store" in capsys.readouterr().out
    assert main(["list", "shapes"]) == 2
    assert "unknown list 'shapes'" in capsys.readouterr().err


PLUGIN = '''
    from harness.engine.method import Method
    from harness.engine.registry import METHODS


    class Echo(Method):
        """base under another name, with a parameter of its own: a method from outside the repository."""
        name = "echo"
        description = "a plug-in method"
'''


def cli_in_a_fresh_process(*commands: list[str], path: str = str(ROOT)) -> list[str]:
    """CLI commands run one after another by one new process (`path` its PYTHONPATH), so that what a
    plug-in registers stays out of this one; each must succeed: what each printed."""
    code = ("import contextlib, io, json, sys; from harness.cli import main\n"
            "said = []\n"
            "for argv in json.loads(sys.argv[1]):\n"
            "    out = io.StringIO()\n"
            "    with contextlib.redirect_stdout(out):\n"
            "        code = main(argv)\n"
            "    said.append((code, out.getvalue()))\n"
            "print(json.dumps(said))\n")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(commands)], cwd=ROOT, capture_output=True,
                          text=True, env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    said = json.loads(done.stdout.splitlines()[-1])
    assert all(code == 0 for code, _ in said), done.stderr
    return [out for _, out in said]


def _plugin_folder(root):
    folder = root / "echo_plugin"
    (folder / "configs" / "method").mkdir(parents=True)
    (folder / "echo.py").write_text(textwrap.dedent(PLUGIN) + '\nMETHODS.register("echo", Echo)\n')
    (folder / "configs" / "method" / "echo.yaml").write_text("# the echo plug-in\nname: echo\n")
    return folder


@pytest.mark.slow
def test_a_method_from_an_include_folder_runs_and_is_listed_with_its_origin(tmp_path):
    folder = _plugin_folder(tmp_path)
    settings = [*CHEAP, f"paths.store={tmp_path / 'runs'}", f"plugins=[{folder}]"]
    _, _, listed = cli_in_a_fresh_process(["run", "method=echo", *settings], ["run", "method=base", *settings],
                                               ["list", "methods", f"plugins=[{folder}]"])
    (line,) = [line for line in listed.splitlines() if line.startswith("echo ")]
    assert f"plug-in {folder / 'echo.py'}" in line
    from harness.store.cells import Store

    cells = Store(tmp_path / "runs").cells()
    videos = [sorted(p.read_bytes() for p in (c.path / "videos").iterdir()) for c in cells]
    assert len(cells) == 2 and videos[0] == videos[1]  # echo is base by another name: the same videos


@pytest.mark.slow
def test_a_method_from_an_installed_package_runs(tmp_path):
    """A package on the path with entry points (refinery.methods, refinery.configs), as `pip install`
    leaves one: its method and its config are found without any setting."""
    pkg = tmp_path / "site" / "echo_pkg"
    (pkg / "configs" / "method").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "configs" / "__init__.py").write_text("")
    (pkg / "method.py").write_text(textwrap.dedent(PLUGIN))
    (pkg / "configs" / "method" / "echo.yaml").write_text("name: echo\n")
    dist = tmp_path / "site" / "echo_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[refinery.methods]\necho = echo_pkg.method:Echo\n\n"
                                           "[refinery.configs]\necho_pkg = echo_pkg.configs\n")
    _, listed = cli_in_a_fresh_process(["run", "method=echo", *CHEAP, f"paths.store={tmp_path / 'runs'}"],
                                         ["list", "methods"], path=f"{ROOT}:{tmp_path / 'site'}")
    assert "package echo-pkg (entry point refinery.methods)" in listed
