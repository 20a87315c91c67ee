"""Pieces of `refinery train-world` that decide what the toy model learns and what ships."""
import json

import torch
from safetensors import safe_open

from harness.models.toy import ToyVideoModel, load_toy
from harness.models.toy_train import SAMPLER_SIGMAS, chunk_sigmas, save_toy


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


def test_checkpoints_round_trip_with_their_config(tmp_path):
    torch.manual_seed(0)
    model = ToyVideoModel()
    path = tmp_path / "toy.safetensors"
    save_toy(model, path, {"steps": 3})
    loaded = load_toy(path)
    assert loaded.digest() == model.digest()
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["training"]) == {"steps": 3}
