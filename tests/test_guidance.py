"""CFG and CFG-Zero*: the limits of the scale, the formula, zero-init, the ledger, refusals."""
import dataclasses
from pathlib import Path

import pytest
import torch

from harness.errors import UsageError
from harness.engine.ledger import Ledger
from conftest import prepared_rollout
from harness.engine.samplers import Sampler
from methods.base import Base
from methods.cfg import ClassifierFreeGuidance, CfgZeroStar, cfg_zero_star_velocity, guided_velocity, optimized_scale

PROMPTS = ["a red circle bouncing", "a green triangle falling"]
SEEDS = [3, 4]
ATOL = 1e-4  # velocity round trips (x - x0) / sigma and back differ from x0 by float rounding only




@pytest.fixture(scope="module")
def model():
    from harness.models.toy import load_toy

    return load_toy().with_chunks(2)


@pytest.fixture
def sharp(randomized_toy):
    """A model whose prompt changes the output a lot, so the limits below are not trivially met."""
    return randomized_toy.with_chunks(2)


@pytest.mark.parametrize("kind", ["stochastic", "ode"])
def test_scale_one_is_the_conditional_model(sharp, kind):
    sampler = Sampler(kind, steps=3)
    cfg = prepared_rollout(sharp, ClassifierFreeGuidance(scale=1.0), PROMPTS, SEEDS, sampler)
    base = prepared_rollout(sharp, Base(), PROMPTS, SEEDS, sampler)
    assert torch.allclose(cfg.latents, base.latents, atol=ATOL)


def test_scale_zero_is_the_unconditional_model(sharp):
    cfg = prepared_rollout(sharp, ClassifierFreeGuidance(scale=0.0), PROMPTS, SEEDS, Sampler())
    uncond = prepared_rollout(sharp, Base(), ["", ""], SEEDS, Sampler())
    cond = prepared_rollout(sharp, Base(), PROMPTS, SEEDS, Sampler())
    assert torch.allclose(cfg.latents, uncond.latents, atol=ATOL)
    assert not torch.allclose(cfg.latents, cond.latents, atol=1e-2)  # the limit is not vacuous


def test_cfg_costs_two_nfe_per_step_and_two_cache_passes_per_commit(model):
    ledger = Ledger()
    prepared_rollout(model, ClassifierFreeGuidance(), PROMPTS, SEEDS, Sampler(steps=3), ledger)
    assert ledger.nfe == 2 * len(SEEDS) * 2 * 3  # branches x videos x chunks x steps
    assert ledger.cache_passes == 2 * len(SEEDS) * 1  # both caches, every chunk but the last


class CandidateCfg(ClassifierFreeGuidance):
    """Starts each chunk from 2 candidate rows per video (candidate 0 is the base draw) and keeps
    candidate 0 after the first step: the result must be CFG's."""

    name = "candidate_cfg"

    def initial_noise(self, ctx):
        return ctx.noise.initial(ctx.chunk, candidates=2)

    def select(self, x0, ctx):
        return torch.arange(0, x0.shape[0], 2) if x0.shape[0] == 2 * len(ctx.noise.seeds) else None


def test_cfg_runs_on_candidate_rows(sharp):
    ledger = Ledger()
    picked = prepared_rollout(sharp, CandidateCfg(), PROMPTS, SEEDS, Sampler(steps=2), ledger)
    plain = prepared_rollout(sharp, ClassifierFreeGuidance(), PROMPTS, SEEDS, Sampler(steps=2))
    assert torch.allclose(picked.latents, plain.latents, atol=ATOL)
    assert ledger.nfe == 2 * len(SEEDS) * 2 * (2 + 1)  # the first step runs both candidates


def test_cfg_zero_star_matches_its_formula():
    gen = torch.Generator().manual_seed(0)
    v_c, v_u = torch.randn(3, 2, 4, 5, 5, generator=gen), torch.randn(3, 2, 4, 5, 5, generator=gen)
    got = cfg_zero_star_velocity(v_c, v_u, 4.0)
    for row in range(3):
        c, u = v_c[row].flatten().double(), v_u[row].flatten().double()
        s = torch.dot(c, u) / (torch.dot(u, u) + 1e-8)
        want = s * u + 4.0 * (c - s * u)
        assert torch.allclose(got[row].flatten().double(), want, atol=1e-5)


def test_optimized_scale_is_the_least_squares_projection():
    gen = torch.Generator().manual_seed(1)
    v_c, v_u = torch.randn(2, 30, generator=gen), torch.randn(2, 30, generator=gen)
    s = optimized_scale(v_c, v_u)
    best = (v_c - s * v_u).pow(2).sum(1)
    for nudge in (-1e-2, 1e-2):
        assert ((v_c - (s + nudge) * v_u).pow(2).sum(1) > best).all()


def test_cfg_zero_star_is_cfg_when_the_optimised_scale_is_one():
    gen = torch.Generator().manual_seed(2)
    v_u = torch.randn(2, 3, 4, 6, 6, generator=gen)
    r = torch.randn(2, 3, 4, 6, 6, generator=gen)
    dims = tuple(range(1, 5))
    r -= (r * v_u).sum(dims, keepdim=True) / v_u.pow(2).sum(dims, keepdim=True) * v_u  # r orthogonal to v_u
    v_c = v_u + r  # so s* = <v_c, v_u> / ||v_u||^2 = 1
    assert torch.allclose(optimized_scale(v_c, v_u).flatten(), torch.ones(2), atol=1e-5)
    assert torch.allclose(cfg_zero_star_velocity(v_c, v_u, 3.0), guided_velocity(v_c, v_u, 3.0), atol=1e-4)
    assert torch.allclose(guided_velocity(v_c, v_u, 3.0), v_u + 3.0 * (v_c - v_u), atol=1e-5)


class Latents(CfgZeroStar):
    """Records each step's input latent and prediction."""

    name = "latents"

    def __init__(self, **params):
        super().__init__(**params)
        self.seen = []

    def denoise(self, x, ctx):
        x0 = super().denoise(x, ctx)
        self.seen.append((ctx.chunk, ctx.step, x, x0))
        return x0


@pytest.mark.parametrize("kind", ["stochastic", "ode"])
def test_zero_init_zeroes_the_first_steps_without_model_calls(model, kind):
    ledger, rec = Ledger(), Latents(zero_init_steps=2)
    prepared_rollout(model, rec, PROMPTS, SEEDS, Sampler(kind, steps=4), ledger)
    for chunk, step, x, x0 in rec.seen:
        if step < 2:
            assert torch.equal(x0, x)  # v̂ = 0: the prediction is the input itself
    assert ledger.nfe == 2 * len(SEEDS) * 2 * (4 - 2)  # zeroed steps call no model


def test_zero_init_is_an_identity_euler_step_for_the_ode_sampler(model):
    rec = Latents(zero_init_steps=2)
    prepared_rollout(model, rec, PROMPTS, SEEDS, Sampler("ode", steps=4), Ledger())
    inputs = {(chunk, step): x for chunk, step, x, _ in rec.seen}
    for chunk in range(2):
        assert torch.allclose(inputs[chunk, 2], inputs[chunk, 0], atol=1e-5)  # still the initial noise


def test_zero_init_steps_zero_zeroes_nothing(model):
    ledger, rec = Ledger(), Latents(zero_init_steps=0)
    prepared_rollout(model, rec, PROMPTS, SEEDS, Sampler(), ledger)
    assert all(not torch.equal(x0, x) for *_, x, x0 in rec.seen)
    assert ledger.nfe == 2 * len(SEEDS) * 2 * 4


def test_zeroing_every_step_is_refused_before_any_model_call(model):
    ledger = Ledger()
    with pytest.raises(UsageError, match="zero_init_steps=4"):
        prepared_rollout(model, CfgZeroStar(zero_init_steps=4), PROMPTS, SEEDS, Sampler(steps=4), ledger)
    assert ledger.nfe == 0


@pytest.mark.parametrize("method", [ClassifierFreeGuidance, CfgZeroStar])
def test_a_model_without_an_unconditional_branch_is_refused(model, method):
    spec = dataclasses.replace(model.spec, has_uncond=False)
    with pytest.raises(UsageError) as err:
        method().prepare(spec, Sampler(), Path("weights"))
    assert "unconditional" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("params", [{"scale": -1.0}, {"scale": float("nan")}, {"scale": float("inf")},
                                    {"scale": "3"}, {"zero_init_steps": -1}, {"zero_init_steps": 1.5}])
def test_bad_parameters_are_one_line_usage_errors(params):
    method = CfgZeroStar if "zero_init_steps" in params else ClassifierFreeGuidance
    with pytest.raises(UsageError) as err:
        method(**params)
    name = next(iter(params))
    assert f"method.params.{name}=" in str(err.value) and "\n" not in str(err.value)
