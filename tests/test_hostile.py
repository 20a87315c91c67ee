"""Hostile input to every command: exit code 2, one `refinery: error:` line, no traceback, no warning,
and the store (one complete tiny cell) and everything beside it byte for byte as it was, no folder
added. In process, so the whole table runs fast. Issue 25's cases (keys given twice, overrides the
config would ignore, a store that is not there, unwritable report folders, YAML tags, joblib without
workers, a planted pickle) are marked below."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import warnings
from pathlib import Path

import pytest

from conftest import FAST, fast_with
from harness.cli import main

SPLIT = ["suite.prompts=a", "red", "circle", "bouncing"]  # what a shell makes of the unquoted override
CASES: dict[str, tuple[list[str], str]] = {
    # run: types, ranges, unknown keys, interpolations, resources
    "n float": (["run", "method=bon", "method.params.n=2.5"], "method.params.n=2.5 is not an integer"),
    "n text": (["run", "method=bon", "method.params.n=abc"], "method.params.n='abc' is not an integer"),
    "n list": (["run", "method=bon", "method.params.n=[1]"], "method.params.n=[1] is not an integer"),
    "n absurd": (["run", "method=bon", "method.params.n=1000000000"], "one rollout batch needs at least"),
    "n zero": (["run", "method=sop", "method.params.n=0"], "method.params.n=0 is out of range"),
    "shift text": (["run", "sampler.shift=abc"], "sampler.shift='abc' is not a finite number"),
    "shift zero": (["run", "sampler.shift=0"], "sampler.shift=0.0 is out of range; use a value > 0"),
    "interpolation": (["run", "sampler.steps=${oops}"], "sampler.steps does not resolve"),
    "seed bool": (["run", "seed=true"], "seed=True is not an integer"),
    "seed negative": (["run", "seed=-1"], "seed=-1 is out of range"),
    "misspelled key": (["run", "sampler.stepz=4"], "sampler.stepz is not an option: did you mean 'steps'"),
    "misspelled model key": (["run", "model.num_chunkz=3"], "did you mean 'num_chunks'"),
    "misspelled root key": (["run", "+samples=3"], "samples is not an option"),
    "prompts string": (["run", "suite.prompts=a red circle bouncing"], "'suite.prompts=[a red circle bouncing]'"),
    "prompts split": (["run", *SPLIT], "'suite.prompts=[a red circle bouncing]'"),
    "pnp tau": (["run", "method=pnp", "method.params.tau=-1"], "method.params.tau=-1.0 is out of range"),
    "pnp plan": (["run", "method=pnp", "method.params.plan=[[0,1]]"], "method.params.plan entry"),
    "cfg zero init": (["run", "method=cfg_zero", "method.params.zero_init_steps=-1"], "zero_init_steps=-1"),
    "unknown param": (["run", "method=bon", "+method.params.m=3"], "method.params.m is not an option"),
    "stats level": (["run", "report.stats.level=1.5"], "report.stats.level=1.5 is out of range"),
    "batch zero": (["run", "batch_size=0"], "batch_size=0 is out of range"),
    "threads text": (["run", "threads=abc"], "threads='abc' is not an integer"),
    "metric typo": (["run", "+metric.dynamics.intervl=3"], "metric.dynamics.intervl is not an option"),
    "metric range": (["run", "metric.dynamics.interval=0"], "metric.dynamics.interval=0 is out of range"),
    "metric no options": (["run", "metric.world_bench.x=1"], "metric.world_bench.x is not an option"),
    "unknown metric": (["run", "+metric.dinamics={}"], "did you mean 'dynamics'"),
    "samples absurd": (["run", "samples_per_prompt=1000000000000"], "videos need"),
    "warp text": (["run", "sampler.warp=maybe"], "sampler.warp='maybe' is not a switch"),
    "chunks zero": (["run", "model.num_chunks=0"], "model.num_chunks=0 is out of range"),
    "vbench crf": (["run", "vbench.crf=99"], "vbench.crf=99 is out of range"),
    "bench repeats": (["run", "report.bench.repeats=0"], "report.bench.repeats=0 is out of range"),
    "unknown method": (["run", "method=bonn"], "did you mean 'bon'"),
    "refiner head": (["run", "method=autorefiner", "method.params.head=half"], "method.params.head='half' is not one of"),
    "head vs checkpoint": (["run", "model=toy_flow", "method=init_noise_refiner", "method.params.head=full"], "head='full' (checkpoint: 'lora')"),
    "no adapter for model": (["run", "model=toy_causvid", "method=lora"], "lora_reward.safetensors is missing"),
    # the other commands
    "sweep bad point": (["sweep", "sampler.steps=2,abc"], "sampler.steps='abc' is not an integer"),
    "sweep misspelled": (["sweep", "sampler.stepz=2,3"], "sampler.stepz is not an option"),
    "score": (["score", "method=bon", "method.params.n=2.5"], "method.params.n=2.5 is not an integer"),
    "report": (["report", "report.stats.draws=0"], "report.stats.draws=0 is out of range"),
    "verify": (["verify", "sampler.shift=abc"], "sampler.shift='abc'"),
    "bench": (["bench", "report.baseline='method=base'", "report.bench.warmup=-1"], "report.bench.warmup=-1"),
    "leaderboard": (["leaderboard", "experiment=quickstart", "report.stats.level=0"], "report.stats.level=0"),
    "train steps": (["train", "method=autorefiner", "train.steps=abc"], "train.steps='abc' is not an integer"),
    "train out": (["train", "method=autorefiner", "train.out=FILE/adapter.safetensors"], "a plain file"),
    "train lr": (["train", "method=lora", "train.lr=0"], "train.lr=0.0 is out of range; use a value > 0"),
    "train nothing": (["train", "method=base"], "has nothing to train"),
    "train fresh batch": (["train", "train=dmd", "method=lora", "train.objective.params.fresh_batch=0"],
                          "train.objective.params.fresh_batch=0 is out of range; use a value >= 1"),
    "train-world steps": (["train-world", "steps=abc"], "train-world: steps='abc' is not an integer"),
    "train-world out": (["train-world", "out=FILE/toy.safetensors"], "a plain file"),
    "train-world typo": (["train-world", "stepz=3"], "stepz is not an option: did you mean 'steps'"),
    "train-world range": (["train-world", "ema=2"], "ema=2.0 is out of range"),
    "train-reward": (["train-reward", "steps=0"], "train-reward: steps=0 is out of range"),
    "train-reward out": (["train-reward", "out=FILE/reward.safetensors"], "a plain file"),
    "train-probe": (["train-probe", "threads=abc"], "train-probe: threads='abc' is not an integer"),
    "distill recipe": (["distill", "recipe=dmd2"], "distill: recipe='dmd2' is not one of"),
    "distill range": (["distill", "ema=1"], "distill: ema=1.0 is out of range"),
    "distill out": (["distill", "out=FILE/toy_sf.safetensors"], "a plain file"),
    "weights check": (["weights", "check", "sampler.stepz=1"], "sampler.stepz is not an option"),
    "weights convert": (["weights", "convert", "model=self_forcing"], "needs checkpoint=PATH"),
    "vbench folder": (["vbench", "aggregate", "TMP/results"], "holds no *_eval_results.json"),
    "vbench nested": (["vbench", "aggregate", "TMP/nested_eval_results.json"], "is corrupt (RecursionError"),
    "vbench format": (["vbench", "aggregate", "TMP/nested_eval_results.json", "format=xml"], "format=xml"),
    "vbench command": (["vbench", "agregate"], "did you mean 'aggregate'"),
    "unknown command": (["rnu"], "did you mean 'run'"),
    # issue 25: overrides that conflict or would be ignored
    "method twice": (["run", "method=bon", "method=sop"], "method is given twice (method=bon, then method=sop)"),
    "param twice": (["run", "method=bon", "method.params.n=3", "method.params.n=4"], "method.params.n is given twice"),
    "sweep key twice": (["sweep", "sampler.steps=3", "sampler.steps=2,3"], "sampler.steps is given twice"),
    "report key twice": (["report", "seed=0", "seed=1"], "seed is given twice"),
    "train option twice": (["train", "train=dmd", "train=reward", "method=lora", "train.out=TMP/twice.safetensors"],
                           "train is given twice (train=dmd, then train=reward)"),
    "prompts ignored": (["run", "suite=world_eval", "suite.prompts=[a red circle bouncing]"],
                        "suite.prompts is set, but suite 'world_eval' (source world_eval) does not read it"),
    "source ignores prompts": (["run", "suite.source=world_eval"],
                               "suite.prompts is set, but suite 'world_smoke' (source world_eval) does not read it"),
    "verify no store": (["verify", "paths.store=TMP/no_store"], "no store at"),
    "verify no store listed": (["verify", "method=bon", "paths.store=TMP/no_store"], "no store at"),
    # issue 25: tracebacks before
    "reports unwritable": (["report", "paths.reports=/proc/self/reports"], "paths.reports=/proc/self/reports: folder"),
    "leaderboard unwritable": (["leaderboard", "experiment=quickstart", "paths.reports=/proc/self/reports"],
                               "is not writable"),
    "yaml tag": (["run", "plugins=[TMP/tagged]", "method=evil"], "evil.yaml, line 2, is not plain YAML"),
    "yaml tag listed": (["list", "methods", "plugins=[TMP/tagged]"], "evil.yaml, line 2, is not plain YAML"),
    "yaml syntax": (["run", "plugins=[TMP/broken]", "method=broken"], "broken.yaml, line 3, is not plain YAML"),
    "joblib no workers": (["sweep", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0"],
                          "hydra.launcher.n_jobs=0 is not a number of workers"),
    "submitit folder given": (["sweep", "hydra/launcher=submitit_local", "hydra.launcher.submitit_folder=TMP/jobs"],
                              "hydra.launcher.submitit_folder is set by Refinery"),
    "pickle as resume": (["train", "method=autorefiner", "train.out=TMP/planted.safetensors"],
                         "TMP/planted.resume.pt is resume state in the one-file format"),
    "pickle as DCP index": (["train", "method=autorefiner", "train.out=TMP/planted_dcp.safetensors"],
                            "resume state TMP/planted_dcp.steps/step-1 is unreadable or holds more than tensors"),
}
STORE_FREE = {"train", "train-world", "distill", "train-reward", "train-probe", "vbench", "rnu"}  # take no paths.store
PAYLOAD = "!!python/object/apply:os.system [touch PWNED]"  # a YAML tag and a pickle that would run a command


def snapshot(root: Path) -> dict[str, tuple[int, str] | None]:
    """Every file's size and digest, and every folder (None): a folder made and left empty counts."""
    return {str(p.relative_to(root)): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
            if p.is_file() else None for p in sorted(root.rglob("*"))}


class Planted:
    def __reduce__(self):
        return os.system, ("touch PWNED",)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store with one complete tiny cell, a plain file, a folder named like a results file (inside
    a results folder) and a results file nested deeper than any parser's stack."""
    tmp = tmp_path_factory.mktemp("hostile")
    assert main(["run", *FAST, f"paths.store={tmp / 'store'}"]) == 0
    (tmp / "file").write_text("a plain file, not a folder")
    (tmp / "results" / "color_eval_results.json").mkdir(parents=True)
    (tmp / "nested_eval_results.json").write_text("[" * 100_000 + "]" * 100_000)
    for name, text in (("tagged/configs/method/evil.yaml", f"name: base\nx: {PAYLOAD}\n"),
                       ("broken/configs/method/broken.yaml", "name: base\nx: [1\n")):
        (tmp / name).parent.mkdir(parents=True)
        (tmp / name).write_text(text)
    (tmp / "planted.resume.pt").write_bytes(pickle.dumps({"step": Planted()}, protocol=4))
    (tmp / "planted_dcp.steps" / "step-1").mkdir(parents=True)  # a step folder whose DCP index runs a command
    (tmp / "planted_dcp.steps" / "step-1" / ".metadata").write_bytes(pickle.dumps(Planted(), protocol=4))
    return tmp


def fill(arg: str, tmp: Path) -> str:
    return arg.replace("FILE", str(tmp / "file")).replace("TMP", str(tmp))


def assert_refused(argv: list[str], expected: str, capsys) -> str:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refinery: error:"), err
    assert "Traceback" not in out + err
    assert expected in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input_is_one_line_exit_2_and_the_store_is_unchanged(name, world, capsys):
    argv, expected = CASES[name]
    argv = [fill(a, world) for a in argv]
    expected = fill(expected, world)
    if argv[0] not in STORE_FREE:  # the tiny cell's settings first, but not those the case sets itself
        at = 2 if argv[0] in ("weights", "list") else 1
        argv = [*argv[:at], *fast_with(argv[at:], [*FAST, f"paths.store={world / 'store'}"])]
    before = snapshot(world)
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as warned:  # a warning is a line on stderr outside pytest
        warnings.simplefilter("always")
        line = assert_refused(argv, expected, capsys)
    assert not [str(w.message) for w in warned]
    assert "+sampler" not in line and "To append" not in line
    assert snapshot(world) == before and not Path("PWNED").exists()


def test_a_status_file_holding_a_list_is_one_line_naming_it(world, tmp_path, capsys):
    store = tmp_path / "store"
    shutil.copytree(world / "store", store)
    (status,) = store.glob("cells/*/status.json")
    status.write_text(json.dumps([1, 2]))
    before = snapshot(store)
    capsys.readouterr()
    line = assert_refused(["report", *FAST, f"paths.store={store}", f"paths.reports={tmp_path}"], str(status), capsys)
    assert "status" in line
    assert snapshot(store) == before


def test_a_job_folder_others_can_write_is_refused_before_anything_is_written(world, capsys):
    """submitit's job pickles are code: a folder of them that group or others may enter is refused."""
    from harness.experiment.launchers import job_folder

    open_folder = job_folder(str(world / "jobs"), world / "store")
    open_folder.mkdir(parents=True)
    open_folder.chmod(0o777)
    try:
        before = snapshot(world)
        capsys.readouterr()
        assert_refused(["sweep", *FAST, f"paths.store={world / 'store'}", "hydra/launcher=submitit_local",
                        f"paths.jobs={world / 'jobs'}"], "is open to group or others (mode 0777)", capsys)
        assert snapshot(world) == before
    finally:
        shutil.rmtree(world / "jobs")


def test_a_job_folder_is_private_and_one_per_store(tmp_path):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from harness.experiment.launchers import job_folder, submitit_override, submitit_sweep_folder

    submitit = OmegaConf.create({"submitit_folder": "x"})
    folder = submitit_sweep_folder(submitit, str(tmp_path / "jobs"), tmp_path / "store", [])
    assert folder.parent == job_folder(str(tmp_path / "jobs"), tmp_path / "store")
    assert (folder.parent.stat().st_mode & 0o777) == 0o700 and not folder.parent.is_relative_to(tmp_path / "store")
    assert job_folder(None, tmp_path / "store") != job_folder(None, tmp_path / "other")
    assert submitit_sweep_folder(OmegaConf.create({"n_jobs": 2}), None, tmp_path / "store", []) is None
    odd = tmp_path / "it's a\\folder"
    (parsed,) = OverridesParser.create().parse_overrides([submitit_override(odd)])
    assert parsed.value() == f"{odd}/%j"
