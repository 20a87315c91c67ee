"""`refinery distill`: the students of toy_sf and toy_causvid train through the one rollout loop with the
keyed noise of sampling, CausVid's student sees clean data as its context, a killed distillation resumes
to the uninterrupted run's weights, and the shipped students are what the configs load."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.cli import main
from harness.experiment.plans import compose
from harness.models import toy_distill
from harness.models.toy import ToyVideoModel, load_toy
from harness.engine.noise import NoiseSource
from harness.experiment.pipeline import load_model, sampler_from
from harness.engine.context import RolloutResult
from harness.engine.samplers import Sampler, renoise
from harness.engine.rollout import rollout
from harness.train import trainer
from methods.base import Base

TINY = {"num_chunks": 2, "batch": 2, "steps": 1, "fake_updates": 2, "checkpoint_every": 1, "threads": 0}


def config(tmp_path: Path, recipe: str = "self_forcing", **changes) -> toy_distill.DistillConfig:
    return toy_distill.DistillConfig(recipe=recipe, out=str(tmp_path / "model.safetensors"),
                                     work=str(tmp_path / "work"), **{**TINY, **changes})


def recorded_rollouts(monkeypatch) -> list[tuple[tuple, dict, RolloutResult]]:
    """Every rollout the trainer makes, with its arguments and result."""
    calls = []

    def recording(*args, **kwargs):
        result = rollout(*args, **kwargs)
        calls.append((args, kwargs, result))
        return result

    monkeypatch.setattr(trainer, "rollout", recording)
    return calls


def truncated(sampler: Sampler, exit_step: int) -> Sampler:
    """The sampler that stops at `exit_step`: the same levels, fewer steps."""
    return Sampler(sampler.kind, exit_step + 1, sampler.shift, sampler.timesteps[: exit_step + 1], sampler.warp)


def test_the_self_forcing_students_training_rollouts_are_sampling_rollouts(tmp_path, monkeypatch):
    """One generator update: its rollout and the critic's fresh rollouts all go through harness.engine.rollout,
    and each equals, bit for bit, the sampling rollout of the same student (before the update: the
    teacher's weights) with `base` on the same seeds, stopped at the rollout's exit step."""
    t = toy_distill.build_training(config(tmp_path))
    calls = recorded_rollouts(monkeypatch)
    trainer.train_step(t, torch.optim.AdamW(t.parameters, lr=1e-3, betas=(0.0, 0.999)), 0)
    fresh = calls[1:]  # after the generator's rollout, the critic updates': one batched call per exit step
    assert 1 <= len(fresh) <= TINY["fake_updates"]
    assert sum(len(c[0][3]) for c in fresh) == TINY["fake_updates"] * TINY["batch"]
    teacher = load_toy("toy_flow").with_chunks(TINY["num_chunks"])
    (model, method, prompts, seeds, sampler, *_), kwargs, result = calls[0]
    assert model is t.model and method is t.method and kwargs["exit_step"] is not None
    assert result.latents.requires_grad  # the exit step's denoising carries gradient into the student
    sampled = rollout(teacher, Base(), prompts, seeds, truncated(sampler, kwargs["exit_step"]))
    assert torch.equal(result.latents.detach(), sampled.latents)
    seeds = [seed for c in calls for seed in c[0][3]]
    assert len(set(seeds)) == len(seeds)  # every critic update draws fresh videos
    assert not any(c[2].latents.requires_grad for c in calls[1:])  # critic rollouts record no graph


def spy(monkeypatch, name: str, calls: list) -> None:
    """Record the tensors every call of ToyVideoModel.<name> (denoise or commit) receives."""
    raw = getattr(ToyVideoModel, name).__wrapped__

    @torch.no_grad()
    def recording(self, x, *args):
        calls.append((x.clone(), *args[:1]))
        return raw(self, x, *args)

    monkeypatch.setattr(ToyVideoModel, name, recording)


def test_causvid_student_denoises_data_at_its_chunks_levels_on_clean_data_context(tmp_path, monkeypatch):
    """Diffusion forcing on teacher-forced context: each chunk is the data chunk noised with the keyed
    path noise to the chunk's own level, denoised there once, and the cache receives the data chunk."""
    t = toy_distill.build_training(config(tmp_path, "causvid", num_chunks=3))
    denoised, committed = [], []
    spy(monkeypatch, "denoise", denoised)
    spy(monkeypatch, "commit", committed)
    prompts, seeds = ["a red circle bouncing", "a green triangle falling"], [3, 4]
    result = rollout(t.model, t.method, prompts, seeds, t.sampler, exit_step=t.sampler.steps - 1)
    chunks = toy_distill.world_latents(t.model, prompts, seeds).split(3, dim=1)
    assert len(committed) == 2 and all(torch.equal(c[0], d) for c, d in zip(committed, chunks))
    assert len(denoised) == 3  # one student call per chunk, at the chunk's level
    noise, sigmas = NoiseSource(seeds, (3, *t.model.spec.latent_shape)), t.sampler.sigmas
    for chunk, ((x, sigma), level) in enumerate(zip(denoised, result.state["levels"])):
        assert float(sigma) == float(sigmas[level])
        expected = noise.initial(chunk) if level == 0 else \
            renoise(chunks[chunk], noise.path(chunk, level - 1), sigmas[level])
        assert torch.allclose(x, expected, atol=1e-6)


@pytest.mark.parametrize("recipe", ["self_forcing", "causvid"])
def test_a_killed_distillation_resumes_to_the_uninterrupted_runs_weights(tmp_path, monkeypatch, recipe):
    whole = config(tmp_path / "whole", recipe, steps=3, ema_start=1)  # the average is part of the state
    toy_distill.distill(whole, progress=False)
    killed = config(tmp_path / "killed", recipe, steps=3, ema_start=1)
    calls, step = [], trainer.train_step

    def dies_at_the_third_step(*args):
        calls.append(args[2])
        if len(calls) == 3:
            raise KeyboardInterrupt  # the kill: step 2 is lost, the checkpoints of steps 1 and 2 are on disk
        return step(*args)

    monkeypatch.setattr(trainer, "train_step", dies_at_the_third_step)
    with pytest.raises(KeyboardInterrupt):
        toy_distill.distill(killed, progress=False)
    assert not Path(killed.out).exists()
    calls.clear()
    toy_distill.distill(killed, progress=False)
    assert calls == [2]  # resumed after the checkpoint of steps 1 and 2
    a, b = load_file(whole.out), load_file(killed.out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    teacher = load_toy("toy_flow").state_dict()
    assert any(not torch.equal(a[k], teacher[k]) for k in a if k.startswith("denoiser."))  # it trained
    assert all(torch.equal(a[k], teacher[k]) for k in a if not k.startswith("denoiser."))  # text, VAE: the teacher's
    model = load_toy(whole.out)
    assert model.name == toy_distill.RECIPES[recipe].model and model.teacher == "toy_flow"


@pytest.mark.parametrize("name,steps,shift", [("toy_flow", 4, 1.0), ("toy_sf", 4, 5.0), ("toy_causvid", 3, 8.0)])
def test_the_configs_load_the_shipped_models_with_their_own_samplers(name, steps, shift):
    cfg = compose([f"model={name}"])
    model, sampler = load_model(cfg), sampler_from(cfg)
    assert model.spec.name == cfg.model.name == name
    assert (sampler.steps, sampler.shift) == (steps, shift)
    assert model.teacher == (None if name == "toy_flow" else "toy_flow")
    real, _ = model.dmd_scores(Path("weights"))  # a student's real score is its teacher's denoiser
    teacher = load_toy("toy_flow").denoiser
    assert all(torch.equal(p, q) for p, q in zip(real.module.parameters(), teacher.parameters()))


def test_toy_is_the_self_forcing_base(toy):
    """`model=toy`, the default, and load_toy() are toy_sf: the same config, weights and cells."""
    assert compose([]).model == compose(["model=toy"]).model == compose(["model=toy_sf"]).model
    assert toy.name == "toy_sf" and toy.digest() == load_toy("toy_sf").digest() != load_toy("toy_flow").digest()


def test_bad_distill_input_is_one_line(tmp_path, capsys):
    out = tmp_path / "never.safetensors"
    for bad, reason in ((["recipe=dmd2"], "not one of"), (["steps=0"], "steps=0"), (["batch=x"], "batch"),
                        (["stepz=3"], "did you mean 'steps'"), ([f"teacher={tmp_path}/none.safetensors"], "missing")):
        assert main(["distill", f"out={out}", f"work={tmp_path}", *bad]) == 2, bad
        err = capsys.readouterr().err
        assert err.startswith("refinery: error:") and err.count("\n") == 1 and reason in err, err
    assert not out.exists()

