"""Predict-and-Perturb: its limits against base, the ledger, the two schedule forms, determinism,
the mapping of the official Euler step onto the loop, refusals."""
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from harness.errors import UsageError
from harness.engine.ledger import Ledger
from harness.engine.method import Method
from conftest import prepared_rollout
from harness.engine.samplers import Sampler
from methods.base import Base
from methods.cfg import ClassifierFreeGuidance
from methods.pnp import PnpParams, PredictAndPerturb

PROMPTS = ["a red circle bouncing", "a green triangle falling"]
SEEDS = [3, 4]
CHUNKS = 2
SAMPLERS = [Sampler("stochastic", steps=4), Sampler("ode", steps=4)]




@pytest.fixture(scope="module")
def model():
    from harness.models.toy import load_toy

    return load_toy().with_chunks(CHUNKS)


def run(model, method, sampler):
    ledger = Ledger()
    return prepared_rollout(model, method, PROMPTS, SEEDS, sampler, ledger), ledger


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: s.kind)
@pytest.mark.parametrize("params", [{"iterations": 0}, {"fraction": 0.0}, {"plan": []}, {"plan": [[0, 3, 0]]}])
def test_no_extra_iterations_is_base_bit_for_bit(model, sampler, params):
    pnp, pnp_ledger = run(model, PredictAndPerturb(**params), sampler)
    base, base_ledger = run(model, Base(), sampler)
    assert torch.equal(pnp.latents, base.latents) and torch.equal(pnp.videos, base.videos)
    assert pnp_ledger.nfe == base_ledger.nfe


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: s.kind)
def test_everything_certain_keeps_the_base_step_and_stops_after_one_iteration(model, sampler):
    """With every position certain at the first extra iteration, the official semantics keep the
    previous x0 and z_next everywhere, i.e. the step's own prediction and its base Euler step: the
    video is base's bit for bit, and the early stop means one (discarded) extra NFE per refined step,
    not `iterations`."""
    pnp, pnp_ledger = run(model, PredictAndPerturb(tau=1e9, iterations=3, fraction=0.5), sampler)
    base, base_ledger = run(model, Base(), sampler)
    assert torch.equal(pnp.latents, base.latents)
    assert pnp_ledger.nfe - base_ledger.nfe == len(SEEDS) * CHUNKS * 2 * 1  # 2 refined steps, 1 NFE each


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: s.kind)
@pytest.mark.parametrize("params,extra", [({"iterations": 2, "fraction": 0.5}, 2 + 2),
                                          ({"plan": [[0, 0, 3], [1, 2, 1]]}, 3 + 1 + 1)])
def test_extra_nfe_is_the_scheduled_iterations_without_early_stop(randomized_toy, sampler, params, extra):
    model = randomized_toy.with_chunks(CHUNKS)
    pnp, pnp_ledger = run(model, PredictAndPerturb(tau=0.0, **params), sampler)  # nothing is ever certain
    base, base_ledger = run(model, Base(), sampler)
    assert pnp_ledger.nfe - base_ledger.nfe == len(SEEDS) * CHUNKS * extra
    assert pnp_ledger.cache_passes == base_ledger.cache_passes
    assert not torch.allclose(pnp.latents, base.latents, atol=1e-3)  # the refinement did something


@pytest.mark.parametrize("iterations,fraction,plan,steps", [
    (2, 0.5, [[0, 1, 2]], 4),
    (1, 0.2, [[0, 0, 1]], 4),  # the paper's alpha = 0.2 still refines the first of 4 steps
    (3, 0.3, [[0, 2, 3]], 10),  # 0.3 * 10 is 3 steps, not 4
    (1, 1.0, [[0, 7, 1]], 8),
    (2, 0.0, [], 4),
])
def test_both_schedule_forms_give_the_same_per_step_plan(iterations, fraction, plan, steps):
    paper = PredictAndPerturb(iterations=iterations, fraction=fraction).params.per_step(steps)
    code = PredictAndPerturb(plan=plan).params.per_step(steps)
    assert paper == code


def test_a_plan_overrides_the_paper_form_and_later_entries_win():
    params = PredictAndPerturb(iterations=5, fraction=1.0, plan=[[0, 2, 1], [2, 3, 2]]).params
    assert params.per_step(5) == [1, 1, 2, 2, 0]


def test_both_schedule_forms_give_the_same_video(model):
    paper, _ = run(model, PredictAndPerturb(iterations=2, fraction=0.5), SAMPLERS[0])
    code, _ = run(model, PredictAndPerturb(plan=[[0, 1, 2]]), SAMPLERS[0])
    assert torch.equal(paper.latents, code.latents)


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: s.kind)
def test_same_seed_same_video(randomized_toy, sampler):
    model = randomized_toy.with_chunks(CHUNKS)
    a, _ = run(model, PredictAndPerturb(iterations=2), sampler)
    b, _ = run(model, PredictAndPerturb(iterations=2), sampler)
    other = prepared_rollout(model, PredictAndPerturb(iterations=2), PROMPTS, [5, 6], sampler)
    assert torch.equal(a.videos, b.videos)
    assert not torch.equal(a.videos, other.videos)


class Steps(PredictAndPerturb):
    """Records each step's input latent and, at refined steps, the official step output: an Euler step
    from the blended perturbed latent z with the velocity of the refined (blended) x0."""

    name = "steps"

    def __init__(self, **params):
        super().__init__(**params)
        self.inputs, self.euler = {}, {}

    def denoise(self, x, ctx):
        self.inputs[ctx.chunk, ctx.step] = x
        x0 = super().denoise(x, ctx)
        if self.extra[ctx.step] and not ctx.is_last_step:
            v = (ctx.state["latent"] - x0) / ctx.sigma
            self.euler[ctx.chunk, ctx.step + 1] = ctx.state["latent"] + (ctx.sampler.sigmas[ctx.step + 1] - ctx.sigma) * v
        return x0


@pytest.mark.parametrize("tau", [0.0, 1.0])  # nothing certain; about half of the positions certain
def test_ode_step_is_an_euler_step_from_the_last_perturbed_latent(randomized_toy, tau):
    rec = Steps(iterations=2, fraction=0.5, tau=tau)
    prepared_rollout(randomized_toy.with_chunks(CHUNKS), rec, PROMPTS, SEEDS, SAMPLERS[1])
    assert sorted(rec.euler) == [(c, s) for c in range(CHUNKS) for s in (1, 2)]
    for key, euler in rec.euler.items():
        assert torch.allclose(rec.inputs[key], euler, atol=1e-5)


@dataclass(frozen=True)
class GuidedParams(PnpParams):
    scale: float = 3.0


class GuidedPnp(PredictAndPerturb, ClassifierFreeGuidance):
    name = "guided_pnp"
    Params = GuidedParams


def test_pnp_composes_with_guidance(model):
    """P&P over CFG predictions, as in the official code: no extra iterations is CFG bit for bit, and
    every extra iteration costs both branches."""
    plain, _ = run(model, GuidedPnp(iterations=0), SAMPLERS[0])
    cfg, cfg_ledger = run(model, ClassifierFreeGuidance(), SAMPLERS[0])
    assert torch.equal(plain.latents, cfg.latents)
    _, ledger = run(model, GuidedPnp(iterations=1, fraction=0.5, tau=0.0), SAMPLERS[0])
    assert ledger.nfe - cfg_ledger.nfe == 2 * len(SEEDS) * CHUNKS * 2
    assert ledger.cache_passes == cfg_ledger.cache_passes == 2 * len(SEEDS) * (CHUNKS - 1)


class Scripted(Method):
    """A predictor that returns scripted x0 values per (video, position), one script per call."""

    name = "scripted"

    def __init__(self, script, **params):
        super().__init__(**params)
        self.script, self.calls = script, 0

    def denoise(self, x, ctx):
        self.calls += 1
        return self.script[self.calls - 1].view(2, 1, 1, 1, 2).expand_as(x).clone()


class ScriptedPnp(PredictAndPerturb, Scripted):
    """P&P's predictions go through super().denoise, so here through the script."""

    name = "scripted_pnp"

    def perturb_noise(self, x, k, ctx):
        return torch.full_like(x, float(k))


def test_refine_keeps_certain_positions_and_stops_early():
    """Two videos of two latent positions (two channels each), tau = 0.1, certain_fraction = 0.4.
    k = 1: video 0 moves 0.0625 at position 0 (certain: keeps x0 = 0 and z = x = 0 there) and is then
    half certain, so it stops; video 1 moves everywhere and takes x0_1 = 1, z_1 = 0.5 * 0 + 0.5 * 1.
    k = 2: only video 1 changes: position 1 does not move (certain, keeps x0 = 1, z = 0.5), position 0
    moves 0.9375 and takes x0_2 = 0.0625, z_2 = 0.5 * 1 + 0.5 * 2; now half certain, so no k = 3."""
    script = [torch.tensor([[0.0625, 1.0], [1.0, 1.0]]), torch.tensor([[9.0, 9.0], [0.0625, 1.0]])]
    method = ScriptedPnp(script, tau=0.1, certain_fraction=0.4)
    ctx = SimpleNamespace(sigma=0.5, chunk=0, step=0)
    x = torch.zeros(2, 1, 2, 1, 2)  # (videos, frames, channels, h, w)
    refined, latent = method.refine(x, torch.zeros_like(x), 3, ctx)
    assert refined[0].flatten().tolist() == [0.0, 1.0, 0.0, 1.0]  # channel-major: c0 w0, c0 w1, c1 w0, c1 w1
    assert refined[1].flatten().tolist() == [0.0625, 1.0, 0.0625, 1.0]
    assert latent[0].flatten().tolist() == [0.0, 0.5, 0.0, 0.5]
    assert latent[1].flatten().tolist() == [1.5, 0.5, 1.5, 0.5]
    assert method.calls == 2  # the early stop skipped k = 3


@pytest.mark.parametrize("params", [
    {"tau": -0.1}, {"tau": float("nan")}, {"iterations": -1}, {"iterations": 1000}, {"iterations": 1.5},
    {"fraction": -0.1}, {"fraction": 1.5}, {"certain_fraction": 2.0},
    {"plan": [[0, 1]]}, {"plan": [[2, 1, 1]]}, {"plan": [[-1, 0, 1]]}, {"plan": [[0, 1, -1]]},
    {"plan": [[0, 1, 1.5]]}, {"plan": "0,1,2"}, {"plan": [0, 1, 2]},
])
def test_bad_parameters_are_one_line_usage_errors(params):
    with pytest.raises(UsageError) as err:
        PredictAndPerturb(**params)
    assert f"method.params.{next(iter(params))}" in str(err.value) and "\n" not in str(err.value)


def test_a_plan_past_the_last_step_is_refused_before_any_model_call(model):
    ledger = Ledger()
    with pytest.raises(UsageError, match="reaches step 5"):
        prepared_rollout(model, PredictAndPerturb(plan=[[2, 5, 1]]), PROMPTS, SEEDS, Sampler(steps=4), ledger)
    assert ledger.nfe == 0


def test_plan_entries_of_zero_iterations_are_skipped_as_the_official_code_skips_them():
    """A 0-iteration entry neither takes refinement away from an earlier entry nor counts against the
    sampler's steps."""
    params = PredictAndPerturb(plan=[[0, 3, 2], [1, 2, 0], [4, 9, 0]]).params
    assert params.per_step(4) == [2, 2, 2, 2]
