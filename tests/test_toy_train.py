"""Pieces of `refinery train-world` that decide what the toy model learns and what ships."""
import json
import warnings

import pytest
import torch
from safetensors import safe_open

from harness.errors import UsageError
from harness.models import toy_train
from harness.models.toy import FLOW_WEIGHTS, ToyConfig, ToyVideoModel, load_toy
from harness.models.toy_train import SAMPLER_SIGMAS, TrainWorldConfig, chunk_sigmas, denoiser_step, save_toy, train_world
from harness.train.checkpoints import resume_path, step_folders


def test_chunk_noise_levels_follow_diffusion_forcing():
    gen = torch.Generator().manual_seed(0)
    sig = chunk_sigmas(4000, 7, 3, sampler_prob=0.5, noisy_first=0.5, gen=gen)
    per_chunk = sig[:, ::3]
    assert sig.shape == (4000, 21) and torch.equal(sig, per_chunk.repeat_interleave(3, 1))
    assert ((sig >= 0) & (sig <= 1)).all()
    # about half of the clips keep their first chunk noisy; the others start with a clean prefix
    assert 0.45 < (per_chunk[:, 0] > 0).float().mean() < 0.55
    prefix = (per_chunk == 0).int().cumprod(1).sum(1)
    assert ((per_chunk == 0).sum(1) >= prefix).all()  # zeros come as a prefix
    # a chunk's level is independent of its neighbours' (not a shared level per clip)
    noisy = per_chunk[prefix == 0]
    assert (noisy[:, 0] != noisy[:, 1]).float().mean() > 0.5
    # the default sampler's levels are over-represented
    at_levels = torch.isin(noisy, SAMPLER_SIGMAS).float().mean()
    assert 0.45 < at_levels < 0.55


def test_train_worlds_default_architecture_is_the_toy_models():
    assert toy_train.architecture(TrainWorldConfig()) == ToyConfig()


def test_checkpoints_round_trip_with_their_config(tmp_path):
    torch.manual_seed(0)
    model = ToyVideoModel()
    path = tmp_path / "toy.safetensors"
    save_toy(model, path, {"steps": 3})
    loaded = load_toy(path)
    assert loaded.digest() == model.digest()
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["training"]) == {"steps": 3}


# -- train-world: resume and architecture ----------------------------------------------------------

def _tiny(out, **changes) -> TrainWorldConfig:
    """A train-world run of seconds: the shipped autoencoder (training one costs a 4096-frame pass for its
    latent statistics), a small denoiser (patch 2: the architecture options), 2 + 3 steps."""
    return TrainWorldConfig(**{"out": str(out), "videos_per_prompt": 1, "vae_from": str(FLOW_WEIGHTS),
                               "first_chunk_steps": 2, "steps": 3, "batch": 2, "warmup": 1, "checkpoint_every": 2,
                               "threads": 1, "patch": 2, "dim": 32, "heads": 2, "depth": 1, **changes})


@pytest.fixture
def few_prompts(monkeypatch):
    monkeypatch.setattr(toy_train, "train_prompts", lambda: ["a red circle bouncing", "a blue square falling"])


def test_a_killed_train_world_resumes_to_the_uninterrupted_runs_weights(tmp_path, monkeypatch, few_prompts):
    whole = train_world(_tiny(tmp_path / "whole.safetensors"))
    steps = []

    def dies_at_the_fourth_step(t, latents, text, step):
        steps.append(step)
        if len(steps) == 4:
            raise KeyboardInterrupt  # the kill: step 3 is lost, the checkpoint after step 2 is on disk
        return denoiser_step(t, latents, text, step)

    monkeypatch.setattr(toy_train, "denoiser_step", dies_at_the_fourth_step)
    killed = tmp_path / "killed.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train_world(_tiny(killed))
    assert [p.name for p in step_folders(killed)] == ["step-0", "step-2"]
    steps.clear()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        train_world(_tiny(killed))
    assert not [w for w in said if "torch.distributed" in str(w.message)]  # DCP's load in one process: not news
    assert steps == [2, 3, 4]  # resumed after step 2, the autoencoder not trained again
    assert load_toy(whole).cfg.patch == 2 and load_toy(killed).digest() == load_toy(whole).digest()
    assert not resume_path(killed).exists() and not resume_path(whole).exists()  # removed once complete


def test_train_world_resumes_only_with_its_own_settings(tmp_path, monkeypatch, few_prompts):
    out = tmp_path / "toy.safetensors"

    def dies(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(toy_train, "denoiser_step", dies)
    with pytest.raises(KeyboardInterrupt):
        train_world(_tiny(out))
    with pytest.raises(UsageError, match=r"step-0 belongs to a train-world run with other settings \(lr\); give"):
        train_world(_tiny(out, lr=1e-3))
    assert [p.name for p in step_folders(out)] == ["step-0"]  # nothing lost


@pytest.mark.parametrize("changes,problem", [
    ({"patch": 3}, "patch=3 does not divide the 16x16 latent frame"),
    ({"dim": 30, "heads": 4}, "dim=30 is not a multiple of heads=4"),
    ({"init_from": str(FLOW_WEIGHTS)}, "is a model of another architecture; give its patch=4 dim=128 depth=4 heads=4 to")])
def test_an_architecture_that_does_not_divide_is_refused_before_any_compute(tmp_path, changes, problem):
    with pytest.raises(UsageError, match=problem):
        train_world(_tiny(tmp_path / "toy.safetensors", **changes))
    assert not any(tmp_path.iterdir())
