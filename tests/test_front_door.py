"""The front door: --version, --help, COMMAND --help, `list ...` and command-line errors answer without
importing torch (nor pandas or scipy), each in a fresh interpreter as a user's shell starts one. (A
method's or metric's own parameters are checked by their plug-in's class, whose module imports torch.)"""
import subprocess
import sys

import pytest

from conftest import ROOT

HEAVY = ("torch", "pandas", "scipy")
CHECK = f"""
import sys
from harness.cli import main
code = main(sys.argv[1:])
print('LOADED', *sorted(m for m in {HEAVY!r} if m in sys.modules))
print('CODE', code)
"""

FAST_ANSWERS = {
    "version": (["--version"], 0, "refinery 0.1.0"),
    "help": (["--help"], 0, "COMMAND"),
    "run help": (["run", "--help"], 0, "config groups"),
    "train-world help": (["train-world", "--help"], 0, "vae_steps=600"),
    "vbench sub-command help": (["vbench", "export", "--help"], 0, "usage: refinery vbench export OUT"),
    "list methods": (["list", "methods"], 0, "pnp_official"),
    "list metrics": (["list", "metrics"], 0, "world_bench"),
    "list models": (["list", "models"], 0, "toy           backend toy"),
    "list experiments": (["list", "experiments"], 0, "table2_reward"),
    "list cells": (["list", "cells", "paths.store=/nonexistent/store"], 0, "no store at"),
    "unknown command": (["lst"], 2, "did you mean 'list'"),
    "unknown option, any case": (["run", "method=BoN"], 2, "did you mean 'bon'"),
    "override syntax": (["sweep", "sampler.steps=["], 2, "refinery: error:"),
    "unknown experiment": (["report", "experiment=tabel2_reward"], 2, "did you mean 'table2_reward'"),
    "a value out of range": (["run", "sampler.steps=0"], 2, "sampler.steps=0 is out of range"),
    "an unknown key": (["run", "sampler.stepz=3"], 2, "sampler.stepz is not an option"),
    "a sweep's second cell out of range": (["sweep", "sampler.steps=2,0"], 2, "sampler.steps=0 is out of range"),
    "a training setting out of range": (["train", "method=lora", "train.steps=0"], 2, "train.steps=0 is out of range"),
    "a report's setting out of range": (["score", "seed=-1"], 2, "seed=-1 is out of range"),
}


def _answer(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHECK, *args], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("name", sorted(FAST_ANSWERS))
def test_the_front_door_imports_no_torch(name):
    args, code, expected = FAST_ANSWERS[name]
    result = _answer(args)
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == f"CODE {code}", result.stdout + result.stderr
    assert lines[-2] == "LOADED", f"{args} imported {lines[-2].split()[1:]}"
    assert expected in result.stdout + result.stderr


def test_list_methods_lists_every_method_config_with_the_plug_in_it_runs():
    methods = sorted(p.stem for p in (ROOT / "sweeps" / "method").glob("*.yaml"))
    out = _answer(["list", "methods"]).stdout
    listed = [line.split()[0] for line in out.splitlines()[:-2]]
    assert listed == methods
    row = next(line for line in out.splitlines() if line.startswith("base_2x_steps"))
    assert row.split()[1:3] == ["->", "base"] and "refinery" in row  # runs the registered `base`


def test_list_models_reads_the_backend_through_a_configs_defaults():
    rows = {line.split()[0]: line.split()[2] for line in _answer(["list", "models"]).stdout.splitlines()[:-2]}
    assert rows["toy"] == rows["toy_sf"] == "toy" and rows["self_forcing"] == "wan_causal"


def test_export_help_names_every_option_export_takes():
    """`export --help` lists its options as prose in the CLI (so that help imports nothing); each name
    that harness.report.export takes must be there, so the two lists cannot drift apart."""
    from harness.cli import COMMANDS
    from harness.report.export import OPTIONS

    helped = " ".join(COMMANDS["export"].own)
    assert [o for o in OPTIONS if f"{o}=" not in helped] == []
