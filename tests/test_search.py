"""Best-of-N and Search-over-Path: the verifier's argmax is what goes on, n = 1 is base, and the
ledger counts AutoRefiner Table 2's compute columns."""
from pathlib import Path

import pytest
import torch

from harness.errors import UsageError
from harness.engine.ledger import Ledger
from harness.engine.samplers import Sampler
from harness.engine.rollout import rollout
from harness.verifiers.base import Verifier
from methods.base import Base
from methods.bon import BestOfN
from methods.sop import SearchOverPath

PROMPTS = ["a red circle bouncing", "a green triangle falling"]
SEEDS = [3, 4]
N = 3




class Recording(Verifier):
    """Scores by the frames' spread (any score that differs between candidates will do) and keeps
    every call, so a test can recompute the argmax."""

    name = "recording"

    def __init__(self):
        super().__init__(Path("."))
        self.calls: list[tuple[torch.Tensor, list[str], torch.Tensor]] = []

    def score(self, frames, prompts):
        scores = frames.flatten(1).std(1)
        self.calls.append((frames.clone(), list(prompts), scores.clone()))
        return scores


class TracedSoP(SearchOverPath):
    """Keeps the clean prediction that goes on from each step (what path_noise renoises)."""

    kept: list[torch.Tensor]

    def begin(self, ctx):
        self.kept = []

    def path_noise(self, x, x0, ctx):
        self.kept.append(x0.clone())
        return super().path_noise(x, x0, ctx)


def prepared(cls, model, inject=None, **params):
    method = cls(**params)
    method.prepare(model.spec, Sampler(), Path("weights"))
    if inject is not None:
        method.verifier = inject
    return method


def winners(frames: torch.Tensor, scores: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    best = scores.view(-1, n).argmax(1)
    return best, frames.view(-1, n, *frames.shape[1:])[torch.arange(len(best)), best]


def latents_of(model, latents: torch.Tensor, chunk: int) -> torch.Tensor:
    per = model.spec.frames_per_chunk
    return latents[:, chunk * per: (chunk + 1) * per]


def decoded_after(model, history: torch.Tensor | None, x0: torch.Tensor) -> torch.Tensor:
    """The frames of chunk x0 decoded after the latents `history` (a causal VAE, such as Wan's,
    decodes a chunk from the state of the chunks before it; the toy's frames do not depend on it)."""
    if history is None or not history.shape[1]:
        return model.decode(x0)
    whole = model.decode(torch.cat([history.repeat_interleave(x0.shape[0] // history.shape[0], 0), x0], 1))
    return whole[:, model.decode(history).shape[1]:]


def frames_of(model, result, chunk: int) -> torch.Tensor:
    """One chunk's frames of the result's videos."""
    per = model.spec.frames_per_chunk
    start = model.decode(result.latents[:, : chunk * per]).shape[1] if chunk else 0
    stop = model.decode(result.latents[:, : (chunk + 1) * per]).shape[1]
    return result.videos[:, start:stop]


@pytest.fixture(scope="module", params=["toy", "wan_tiny"])
def model(request, toy, wan_tiny):
    return (toy if request.param == "toy" else wan_tiny).with_chunks(2)


def test_bon_commits_the_best_scored_candidate_of_every_chunk(model):
    verifier = Recording()
    method = prepared(BestOfN, model, verifier, n=N)
    contexts = []
    method.begin = contexts.append  # keep the rollout's context to inspect its cache
    result = rollout(model, method, PROMPTS, SEEDS, Sampler())
    assert len(verifier.calls) == model.spec.num_chunks  # one verification per chunk, at the last step
    chosen = []
    for chunk, (frames, prompts, scores) in enumerate(verifier.calls):
        assert prompts == [p for p in PROMPTS for _ in range(N)]
        best, frames_of_best = winners(frames, scores, N)
        chosen += best.tolist()
        # the video reuses the winners' frames, and they are the decoded committed latents
        assert torch.equal(frames_of(model, result, chunk), frames_of_best)
        history = result.latents[:, : chunk * model.spec.frames_per_chunk]
        latents = latents_of(model, result.latents, chunk)
        assert torch.allclose(decoded_after(model, history, latents), frames_of_best, atol=1e-5)
    assert any(chosen), "every winner was candidate 0; the test would not see a wrong selection"
    # the cache holds the committed winner of chunk 0 and nothing else
    cache = model.new_cache(len(PROMPTS))
    model.commit(latents_of(model, result.latents, 0), model.encode(PROMPTS), cache)
    for (k, v), (k_ref, v_ref) in zip(contexts[0].cache.layers, cache.layers, strict=True):
        assert torch.equal(k, k_ref) and torch.equal(v, v_ref)


def test_sop_keeps_the_argmax_after_every_step(model):
    verifier = Recording()
    method = prepared(TracedSoP, model, verifier, n=N)
    sampler = Sampler(steps=3)
    result = rollout(model, method, PROMPTS, SEEDS, sampler)
    assert len(verifier.calls) == model.spec.num_chunks * sampler.steps
    kept = iter(method.kept)
    for i, (frames, _, scores) in enumerate(verifier.calls):
        chunk, step = divmod(i, sampler.steps)
        _, frames_of_best = winners(frames, scores, N)
        if step < sampler.steps - 1:
            history = result.latents[:, : chunk * model.spec.frames_per_chunk]
            assert torch.allclose(decoded_after(model, history, next(kept)), frames_of_best, atol=1e-5)
        else:
            assert torch.equal(frames_of(model, result, chunk), frames_of_best)
    # the candidates of step 1 branch from one kept prediction with different path noises
    branches = verifier.calls[1][0]
    assert not torch.equal(branches[0], branches[1])


@pytest.mark.parametrize("cls", [BestOfN, SearchOverPath])
@pytest.mark.parametrize("sampler", [Sampler(), Sampler("ode", steps=3)], ids=["stochastic", "ode"])
def test_one_candidate_is_base_bit_for_bit(model, cls, sampler):
    base_ledger, ledger = Ledger(), Ledger()
    base = rollout(model, Base(), PROMPTS, SEEDS, sampler, base_ledger)
    searched = rollout(model, prepared(cls, model, n=1), PROMPTS, SEEDS, sampler, ledger)
    assert torch.equal(searched.videos, base.videos) and torch.equal(searched.latents, base.latents)
    for counter in ("nfe", "cache_passes", "decodes", "verifier_calls"):
        assert getattr(ledger, counter) == getattr(base_ledger, counter)


def per_video(model, method) -> dict[str, float]:
    ledger = Ledger()
    rollout(model, method, PROMPTS, SEEDS, Sampler(steps=4), ledger)
    return ledger.per_video(len(PROMPTS))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["toy", "wan_tiny"])
def test_ledger_counts_autorefiner_table_2_columns(request, backend):
    model = request.getfixturevalue(backend).with_chunks(7)  # Self-Forcing's shape: 7 chunks, 4 stochastic steps
    base = per_video(model, Base())
    bon = per_video(model, prepared(BestOfN, model, n=5))
    sop = per_video(model, prepared(SearchOverPath, model, n=5))
    assert (base["nfe"], base["verifier_calls"], base["decodes"]) == (28, 0, 7)
    assert (bon["nfe"], bon["verifier_calls"], bon["decodes"]) == (140, 35, 35)
    assert (sop["nfe"], sop["verifier_calls"], sop["decodes"]) == (140, 140, 140)
    chunks = 7
    table_2 = {name: (m["nfe"] - base["nfe"], m["verifier_calls"] / chunks, (m["decodes"] - base["decodes"]) / chunks)
               for name, m in (("bon", bon), ("sop", sop))}
    assert table_2 == {"bon": (112, 5, 4), "sop": (112, 20, 19)}
    assert bon["cache_passes"] == sop["cache_passes"] == base["cache_passes"]  # only winners are committed
    # decoder and verifier time is timed inside those calls, as a part of the wall time
    for m in (base, bon, sop):
        assert 0 < m["decode_seconds"] + m["verifier_seconds"] < m["wall_seconds"]
    assert base["verifier_seconds"] == 0 < bon["verifier_seconds"]


@pytest.mark.parametrize("cls", [BestOfN, SearchOverPath])
def test_describe_names_the_verifier_and_its_weights(model, cls):
    described = prepared(cls, model).describe()
    assert described["name"] == cls.name and described["params"] == {"n": 5, "verifier": "world_reward"}
    assert described["verifier"]["name"] == "world_reward" and len(described["verifier"]["digest"]) == 16


@pytest.mark.parametrize("cls", [BestOfN, SearchOverPath])
def test_bad_input_is_refused_before_compute(model, cls, tmp_path):
    with pytest.raises(UsageError, match=r"^method.params.n=0 is out of range; use a value >= 1$"):
        prepared(cls, model, n=0)
    with pytest.raises(UsageError, match="unknown verifier 'world_rewad'; did you mean 'world_reward'"):
        prepared(cls, model, verifier="world_rewad")
    with pytest.raises(UsageError, match=f"needs {tmp_path}/open_clip/ViT-B-32-openai.safetensors, which is missing"):
        cls(verifier="clip_score").prepare(model.spec, Sampler(), tmp_path)
    with pytest.raises(UsageError, match="method.params.candidates is not an option"):
        cls(candidates=4)
