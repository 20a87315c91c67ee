"""Guards a refactor could silently remove: what goes into a cell's key, when stored scores go stale,
that DMD's real score is guided and its fake score learns, that training survives a SIGKILL, and that
the score / methods / metrics commands run."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import FAST, ROOT
from harness.cli import main
from harness.experiment.plans import compose
from harness.experiment.pipeline import generate, open_store, resolve_run, score
from harness.engine.context import RolloutResult
from harness.train.checkpoints import resume_path
from metrics.temporal_flicker import TemporalFlicker
from methods.base import Base


def test_the_weights_digest_and_the_method_version_are_part_of_the_key(monkeypatch):
    cfg = compose(FAST)
    key = resolve_run(cfg).key
    model = resolve_run(cfg).model
    monkeypatch.setattr(type(model), "digest", lambda self: "0" * 16)
    assert resolve_run(cfg).key != key
    monkeypatch.undo()
    monkeypatch.setattr(Base, "version", "2")
    assert resolve_run(cfg).key != key


@pytest.mark.slow
def test_scores_go_stale_with_a_new_metric_version_or_new_options(tmp_path, monkeypatch):
    cfg = compose([*FAST, f"paths.store={tmp_path}"])
    run = resolve_run(cfg)
    store = open_store(cfg)
    generate(run, store, progress=False)
    cell = store.cell(run.key)
    metrics = OmegaConf.create({"temporal_flicker": {}, "dynamics": {"interval": 1}})
    assert sorted(score(cell, metrics, tmp_path)) == ["dynamics", "temporal_flicker"]
    assert score(cell, metrics, tmp_path) == []  # up to date: nothing recomputed
    monkeypatch.setattr(TemporalFlicker, "version", "99")
    assert score(cell, metrics, tmp_path) == ["temporal_flicker"]
    assert score(cell, OmegaConf.create({"dynamics": {"interval": 2}}), tmp_path) == ["dynamics"]
    assert cell.read_scores()["dynamics"]["options"] == {"interval": 2}


class Recording:
    """A score network returning fixed velocities for the conditional and unconditional prompts."""

    def __init__(self, cond_v: float, uncond_v: float):
        self.module = torch.nn.Linear(1, 1)
        self.values = {True: cond_v, False: uncond_v}

    def velocity(self, x_t, sigma, cond):
        conditional = all(cond.prompts)
        return torch.full_like(x_t, self.values[conditional]) + 0 * self.module.weight.sum()


@pytest.mark.parametrize("guidance", [0.0, 3.0])
def test_dmd_guides_its_real_score_and_trains_its_fake_score_online(toy, guidance):
    """The generator's gradient is Self-Forcing's: (x0_fake - x0_real) / mean|x - x0_real| / numel with
    x0_real = x0_c + g (x0_c - x0_u) from the real score's two branches; the fake score learns online,
    one update per fresh rollout."""
    from harness.engine.samplers import Sampler
    from harness.train.distributed import Split, World
    from harness.train.objectives import DmdObjective

    model = toy.with_chunks(2)
    objective = DmdObjective(real_guidance=guidance)
    objective.setup(model, Sampler(), Path("weights"))
    real, fake = objective.real, objective.fake
    objective.real, objective.fake = Recording(1.0, 0.0), Recording(0.5, 0.5)
    x = torch.randn(1, 6, *model.spec.latent_shape, generator=torch.Generator().manual_seed(2))
    latents = x.clone().requires_grad_(True)
    draws = objective.draw(model.spec, 1, torch.Generator().manual_seed(0))
    loss, _ = objective.loss(RolloutResult(None, latents, None), ["a red circle bouncing"], draws)
    loss.backward()
    x_t, sigma, _ = objective.noised(x, draws["loss.u"], draws["loss.eps"])
    s = sigma.view(-1, 1, 1, 1, 1)
    x0_c, x0_u, x0_fake = x_t - s * 1.0, x_t - s * 0.0, x_t - s * 0.5
    x0_real = x0_c + guidance * (x0_c - x0_u)
    expected = (x0_fake - x0_real) / (x - x0_real).abs().mean() / x.numel()
    torch.testing.assert_close(latents.grad, expected, rtol=1e-4, atol=1e-9)
    # the backend's fake score is trained online by update(); the real score is not
    objective.real, objective.fake = real, fake
    real_before = [p.clone() for p in real.module.parameters()]
    fake_before = [p.clone() for p in fake.module.parameters()]
    drawn = []

    def fresh(ks: list[int], rows: list[int]) -> list[tuple[torch.Tensor, list[str]]]:  # a video per update
        drawn.extend(ks)
        return [(x + k, ["a red circle bouncing"]) for k in ks]

    objective.update(draws, fresh, Split.of(1, 1, World()))
    assert drawn == list(range(objective.params.fake_updates)) == list(range(5))  # Self-Forcing's ratio
    assert all(torch.equal(a, b) for a, b in zip(real_before, real.module.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(fake_before, fake.module.parameters()))


@pytest.mark.slow
def test_training_resumes_after_a_sigkill_to_the_uninterrupted_weights(tmp_path):
    """A real SIGKILL of the training process between checkpoints; the rerun finishes the same adapter."""
    from safetensors.torch import load_file

    args = ["train", "method=lora", "model.num_chunks=2", "sampler.steps=2", "train.batch=1", "train.steps=6",
            "train.checkpoint_every=2", "train.threads=1"]
    whole = tmp_path / "whole.safetensors"
    assert main([*args, f"train.out={whole}"]) == 0
    killed = tmp_path / "killed.safetensors"
    cmd = [sys.executable, "-m", "harness.cli", *args, f"train.out={killed}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    # wait (by state, not by time) for a checkpoint short of the end, then kill
    while proc.poll() is None and not resume_path(killed).exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if not resume_path(killed).exists():
        pytest.fail("training finished before it could be killed; give it more steps")
    assert main([*args, f"train.out={killed}"]) == 0
    a, b = load_file(str(whole)), load_file(str(killed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not resume_path(killed).exists()


@pytest.mark.slow
def test_the_score_methods_and_metrics_commands_run(tmp_path, capsys):
    overrides = [*FAST, f"paths.store={tmp_path}", "method=base"]
    assert main(["run", *overrides]) == 0
    capsys.readouterr()
    assert main(["score", *overrides]) == 0
    assert "scored" in capsys.readouterr().out
    assert main(["methods"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("base", "bon", "autorefiner"))
    assert main(["metrics"]) == 0
    assert "world_bench" in capsys.readouterr().out
