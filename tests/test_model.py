"""The model contract on the toy backend: cache equivalence, cache immutability, candidate batching,
and an autoencoder that keeps what the evaluation reads."""
import numpy as np
import pytest
import torch

from harness.errors import UsageError
from harness.models.toy import load_toy
from harness.world.grammar import parse
from harness.world.oracle import judge, read_video
from harness.world.prompts import eval_prompts
from harness.world.render import render

PROMPTS = ["a red circle bouncing", "a blue square and a yellow triangle moving left"]


def test_cached_sampling_equals_recomputing_the_prefix(randomized_toy):
    model = randomized_toy
    cond = model.encode(PROMPTS)
    cache = model.new_cache(2)
    history = torch.zeros(2, 0, *model.spec.latent_shape)
    gen = torch.Generator().manual_seed(1)
    for _ in range(model.spec.num_chunks):
        x = torch.randn(2, 3, *model.spec.latent_shape, generator=gen)
        for sigma in (1.0, 0.6, 0.3):
            cached = model.denoise(x, sigma, cond, cache)
            recomputed = model.recompute_denoise(history, x, sigma, cond)
            assert torch.allclose(cached, recomputed, atol=1e-5, rtol=0)
            x = 0.5 * cached + 0.5 * x
        model.commit(cached, cond, cache)
        history = torch.cat([history, cached], 1)
    assert cache.frames == history.shape[1]
    if model.cfg.context_chunks:  # local attention keeps only the chunks that are attended to
        kept = model.cfg.context_chunks * model.cfg.frames_per_chunk * model.cfg.tokens_per_frame
        assert all(k.shape[2] == v.shape[2] == kept for k, v in cache.layers)


def test_history_changes_the_prediction(randomized_toy):
    """Guards the equivalence test against a cache that is silently ignored."""
    model = randomized_toy
    cond = model.encode(PROMPTS)
    x = torch.randn(2, 3, *model.spec.latent_shape)
    empty, full = model.new_cache(2), model.new_cache(2)
    model.commit(torch.randn(2, 3, *model.spec.latent_shape), cond, full)
    assert (model.denoise(x, 0.5, cond, empty) - model.denoise(x, 0.5, cond, full)).abs().max() > 1e-3


def test_denoise_never_mutates_the_cache(randomized_toy):
    model = randomized_toy
    cond = model.encode(PROMPTS)
    cache = model.new_cache(2)
    model.commit(torch.randn(2, 3, *model.spec.latent_shape), cond, cache)
    before = [(k.clone(), v.clone()) for k, v in cache.layers]
    x = torch.randn(2, 3, *model.spec.latent_shape)
    first = model.denoise(x, 0.7, cond, cache)
    for _ in range(3):
        model.denoise(torch.randn_like(x), 0.4, cond, cache)
    assert cache.frames == 3
    assert all(torch.equal(k, k0) and torch.equal(v, v0) for (k, v), (k0, v0) in zip(cache.layers, before))
    assert torch.equal(model.denoise(x, 0.7, cond, cache), first)


def test_candidates_batch_equals_one_by_one(randomized_toy):
    model = randomized_toy
    cond = model.encode(PROMPTS)
    cache = model.new_cache(2)
    model.commit(torch.randn(2, 3, *model.spec.latent_shape), cond, cache)
    x = torch.randn(2 * 3, 3, *model.spec.latent_shape)  # 3 candidates per video
    batched = model.denoise(x, 0.5, cond, cache)
    for b in range(2):
        one_cache = model.new_cache(1)
        one_cache.frames = cache.frames
        one_cache.layers = [(k[b:b + 1], v[b:b + 1]) for k, v in cache.layers]
        single = model.denoise(x[3 * b: 3 * b + 3], 0.5, cond.select(torch.tensor([b])), one_cache)
        assert torch.allclose(batched[3 * b: 3 * b + 3], single, atol=1e-5)


def test_unconditional_branch_differs_from_conditional(toy):
    cond, uncond = toy.encode(PROMPTS[:1]), toy.encode([""])
    x = torch.randn(1, 3, *toy.spec.latent_shape)
    cache = toy.new_cache(1)
    assert (toy.denoise(x, 0.8, cond, cache) - toy.denoise(x, 0.8, uncond, cache)).abs().max() > 1e-3


def test_out_of_vocabulary_prompt_names_the_words(toy):
    with pytest.raises(UsageError, match="dragon"):
        toy.encode(["a red dragon bouncing"])


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(UsageError, match="missing"):
        load_toy(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(UsageError, match="corrupt"):
        load_toy(bad)


def test_a_loaded_models_digest_is_hashed_once_at_load(monkeypatch):
    import harness.models.toy as toy_module

    calls = []
    monkeypatch.setattr(toy_module, "module_digest", lambda *m: calls.append(m) or "d" * 16)
    model = load_toy()
    assert model.digest() == model.with_chunks(2).digest() == model.digest() == "d" * 16
    assert len(calls) == 1


def test_wan_causal_digest_is_computed_at_load(wan_tiny, monkeypatch):
    import harness.models.wan_causal.loader as wan_loader

    def rehash(*args):
        raise AssertionError("digest() hashed the weights again")

    monkeypatch.setattr(wan_loader, "module_digest", rehash)
    monkeypatch.setattr(wan_loader, "folder_digest", rehash)
    assert wan_tiny.digest() == wan_tiny.with_chunks(1).digest() and len(wan_tiny.digest()) == 16


def test_chunk_count_is_validated(toy):
    with pytest.raises(UsageError, match="num_chunks"):
        toy.with_chunks(0)
    assert toy.with_chunks(2).spec.num_chunks == 2 and toy.spec.num_chunks == 7


def test_autoencoder_round_trip_keeps_what_the_oracle_reads(toy):
    """The shipped autoencoder loses nothing the evaluation reads: shape errors of samples come from
    the denoiser (docs/shapes-world.md, "The toy models")."""
    for prompt in eval_prompts()[::6]:
        scene = parse(prompt.text)
        frames = torch.from_numpy(render(scene, 0)).float().permute(0, 3, 1, 2)
        with torch.no_grad():
            decoded = toy.vae.decode(toy.vae.encode(frames)).permute(0, 2, 3, 1).numpy()
        verdict = judge(scene, read_video(np.round(decoded * 255).astype(np.uint8)))
        assert all(v == 1.0 for v in verdict.values() if not np.isnan(v)), (prompt.text, verdict)
