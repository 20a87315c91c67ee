"""`refinery plan`: the declared costs equal the ledger's counts, no torch, the memory refusals."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import fast_with
from harness.cli import main
from harness.engine.cost import rollout_cost
from harness.engine.registry import METHODS
from harness.errors import UsageError
from harness.experiment import planner
from harness.experiment.plans import compose

ROOT = Path(__file__).resolve().parent.parent
FAST = ["model=toy_sf", "model.num_chunks=3", "sampler.steps=3", "sampler.timesteps=null"]
CASES = [["method=base"], ["method=bon", "method.params.n=2"], ["method=sop", "method.params.n=2"],
         ["method=pnp", "method.params.iterations=2", "method.params.certain_fraction=1.0", "method.params.tau=0"],
         ["method=lora"], ["method=init_noise_refiner"], ["method=autorefiner", "method.params.checkpoint=null"],
         ["method=autorefiner", "method.params.checkpoint=null", "method.params.timesteps=[333]",
          "method.params.previous_output=false"],
         ["method=cfg", "model=toy_flow"], ["method=cfg_zero", "model=toy_flow", "method.params.zero_init_steps=1"]]


@pytest.mark.parametrize("case", CASES, ids=lambda c: " ".join(c))
def test_declared_cost_equals_the_ledger(case):
    """The planner's counts per video are the ledger's, for every method (one video on the toy)."""
    from harness.engine.rollout import rollout
    from harness.experiment.pipeline import resolve_run

    cfg = compose(fast_with(case, FAST))
    run = resolve_run(cfg)
    ledger = rollout(run.model, run.method, run.prompts[:1], run.seeds[:1], run.sampler).ledger
    cost = rollout_cost(METHODS.declared(cfg.method.name, "cost"), planner._params(cfg, str(cfg.model.name)),
                        run.sampler.steps, run.model.spec.num_chunks)
    counted = {k: getattr(ledger, k) for k in ("nfe", "cache_passes", "refiner_calls", "verifier_calls", "decodes")}
    assert counted == {k: v for k, v in cost.as_dict().items() if k in counted}
    assert cost.rows == run.method.rows_per_video()


def test_every_registered_method_is_covered():
    assert {c[0].partition("=")[2] for c in CASES} == set(METHODS.names())


def _plan_without_torch(*args: str) -> subprocess.CompletedProcess:
    code = ("import sys; from harness.cli import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, "plan", *args], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("args", [["experiment=table2_reward", "model=toy_sf", "gpus=2"],
                                  ["experiment=table2_reward", "model=self_forcing", "gpus=8", "batch_size=1"],
                                  ["model=self_forcing", "method=autorefiner", "train=dmd", "train.devices=8"]])
def test_plan_imports_no_torch(args):
    done = _plan_without_torch(*args)
    assert done.returncode == 0, done.stderr
    assert "GPU" in done.stdout


def test_sweep_plan_scales_with_gpus_and_refuses_a_batch_that_cannot_fit(capsys):
    one = planner.plan_sweep(["experiment=table2_reward", "model=self_forcing", "batch_size=1"])
    eight = planner.plan_sweep(["experiment=table2_reward", "model=self_forcing", "batch_size=1", "gpus=8"])
    assert one.gpu_hours == pytest.approx(eight.gpu_hours)
    assert eight.wall_hours_even == pytest.approx(one.wall_hours_even / 8)
    assert eight.wall_hours_per_cell >= max(c.gpu_hours for c in eight.cells)
    assert main(["plan", "experiment=table2_reward", "model=self_forcing", "gpus=8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "GB per GPU" in err[0] and "lower batch_size to" in err[0]


def test_training_plan_refuses_one_gpu_and_accepts_eight(capsys):
    base = ["plan", "model=self_forcing", "method=autorefiner", "train=dmd"]
    assert main([*base, "train.devices=1"]) == 2
    captured = capsys.readouterr()
    assert "DOES NOT FIT" in captured.out and " GB per GPU" in captured.err
    assert main([*base, "train.devices=8"]) == 0
    assert "fits" in capsys.readouterr().out


def test_training_memory_falls_with_devices_checkpointing_and_micro_batch():
    peak = {}
    for devices, ckpt, micro in [(1, False, 1), (8, False, 1), (8, True, 1), (8, True, 2)]:
        cfg = compose(["model=self_forcing", "method=autorefiner", "+train=dmd", f"++train.devices={devices}",
                       f"++train.checkpointing={ckpt}", f"++train.micro_batch={micro}"])
        peak[devices, ckpt, micro] = planner.train_memory(cfg).peak_gb
    assert peak[8, False, 1] < peak[1, False, 1]
    assert peak[8, True, 1] < peak[8, False, 1] < peak[8, False, 1] * 10
    assert peak[8, True, 2] > peak[8, True, 1]


def test_the_critics_fresh_rollouts_are_planned_as_they_are_made():
    """DMD's fresh rollouts made together hold a K/V cache per video at once: with the paper's recipe
    that is the peak, one by one (fresh_batch=1) it is not, and a refusal says so."""
    plans = {}
    for together in ("null", "1"):
        cfg = compose(["model=self_forcing", "method=autorefiner", "+train=dmd", "++train.devices=8",
                       f"train.objective.params.fresh_batch={together}"])
        plans[together] = planner.train_memory(cfg)
    assert plans["null"].phase == "fresh rollouts" and plans["null"].settings["fresh_batch"] == 5
    assert plans["1"].phase != "fresh rollouts" and plans["1"].settings["fresh_batch"] == 1
    assert plans["null"].peak_gb > plans["1"].peak_gb
    paper = compose(["model=self_forcing", "method=autorefiner", "+train=dmd", "++train.devices=8"])
    with pytest.raises(UsageError, match=r"fresh_batch=1\)"):
        planner.refuse_unfit(planner.train_memory(paper, gpu_memory_gb=40))


def test_calibrated_parameter_counts_are_the_built_models():
    """The training tables' parameter counts are those of the architectures the backend builds."""
    import torch
    from diffusers import WanTransformer3DModel

    from harness.models.wan_causal.parts import ARCHITECTURES

    for model, arch in (("self_forcing", "wan2.1-t2v-1.3b"), ("wan_tiny", "tiny")):
        with torch.device("meta"):
            built = WanTransformer3DModel(**ARCHITECTURES[arch])
        table = planner.calibration(model)["training"]["generator"]
        assert table["parameters"] == sum(p.numel() for p in built.parameters())
        assert (table["blocks"], table["ffn"]) == (len(built.blocks), ARCHITECTURES[arch]["ffn_dim"])


def test_gpu_check_without_a_gpu_says_so_and_exits_0():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True, text=True,
                          env={"PATH": "/nonexistent"}, timeout=30)
    assert done.returncode == 0
    assert done.stdout.strip().count("\n") == 0 and "no NVIDIA GPU" in done.stdout


def test_a_merged_trained_method_plans_the_memory_of_its_merged_copy():
    """merge (the default) holds a copy of the adapted weights beside the base's; merge=false does not,
    and a cell that does not fit names it as a way out."""
    sweep = ["model=self_forcing", "method=lora", "method.params.checkpoint=null", "batch_size=1", "prompts=1"]
    merged, deltas = (planner.plan_sweep([*sweep, f"method.params.merge={m}"]).cells[0] for m in ("true", "false"))
    copy_gb = planner.calibration("self_forcing")["memory_gb"]["merged_copy"]
    assert merged.peak_gb - deltas.peak_gb == pytest.approx(copy_gb) and copy_gb > 2
    with pytest.raises(UsageError, match="method.params.merge=false"):
        planner.plan_sweep([*sweep, f"gpu_memory_gb={deltas.peak_gb + copy_gb / 2}"])
    planner.plan_sweep([*sweep, "method.params.merge=false", f"gpu_memory_gb={deltas.peak_gb + copy_gb / 2}"])
