"""The rollout loop: determinism, keyed noise, sampler semantics, the ledger, the hooks."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from harness.engine.ledger import Ledger
from harness.engine.method import Method
from harness.engine.noise import NoiseSource
from harness.experiment.pipeline import cpu_threads
from harness.engine.samplers import Sampler, renoise
from harness.engine.rollout import rollout
from methods.base import Base

PROMPTS = ["a red circle bouncing", "a green triangle falling"]
SEEDS = [3, 4]


def small(model):
    return model.with_chunks(2)


def test_same_seed_same_video_and_other_seed_other_video(toy):
    a = rollout(small(toy), Base(), PROMPTS, SEEDS, Sampler())
    b = rollout(small(toy), Base(), PROMPTS, SEEDS, Sampler())
    c = rollout(small(toy), Base(), PROMPTS, [5, 6], Sampler())
    assert torch.equal(a.videos, b.videos)
    assert not torch.equal(a.videos, c.videos)


@pytest.mark.slow
def test_bit_identical_across_processes_whatever_their_threads_environment(toy, tmp_path):
    """The same spec gives the same bits in any process: generation computes with the spec's thread count
    (cpu_threads), whatever OMP_NUM_THREADS says. Float32 matrix products split their sums by thread
    count, so without it 1 and 2 threads give other bits at some batch sizes (batch 2 here, on AMD EPYC)."""
    script = (
        "import sys, torch; sys.path.insert(0, '.');"
        "from harness.models.toy import load_toy; from harness.engine.rollout import rollout, Sampler;"
        "from harness.experiment.pipeline import cpu_threads; from methods.base import Base\n"
        f"with cpu_threads(2): r = rollout(load_toy().with_chunks(2), Base(), {PROMPTS!r}, {SEEDS!r}, Sampler())\n"
        "torch.save(r.videos, sys.argv[1])"
    )
    outs = []
    for threads in ("1", "2"):
        path = tmp_path / f"v{threads}.pt"
        subprocess.run([sys.executable, "-c", script, str(path)], check=True, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
        outs.append(torch.load(path, weights_only=True))
    with cpu_threads(2):  # conftest runs this process with one thread
        here = rollout(small(toy), Base(), PROMPTS, SEEDS, Sampler()).videos
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], here)


def test_a_video_does_not_depend_on_its_batch(toy):
    """Keyed noise: a (prompt, seed) pair gives the same video alone or in a batch."""
    both = rollout(small(toy), Base(), PROMPTS, SEEDS, Sampler()).videos
    alone = rollout(small(toy), Base(), PROMPTS[1:], SEEDS[1:], Sampler()).videos
    assert torch.allclose(both[1:], alone, atol=1e-5)


def test_noise_is_keyed_and_candidate_zero_is_the_base_draw():
    src = NoiseSource([7, 8], (3, 4, 8, 8))
    assert torch.equal(src.initial(0), NoiseSource([7, 8], (3, 4, 8, 8)).initial(0))
    assert torch.equal(src.initial(0, candidates=3)[0::3], src.initial(0))
    assert torch.equal(src.initial(0)[1], NoiseSource([8], (3, 4, 8, 8)).initial(0)[0])
    draws = [src.initial(0), src.initial(1), src.path(0, 0), src.path(0, 1), src.path(1, 0)]
    for i in range(len(draws)):
        for j in range(i + 1, len(draws)):
            assert not torch.equal(draws[i], draws[j])


def test_stochastic_schedule_matches_self_forcing():
    assert Sampler(steps=4, shift=1.0).sigmas == [1.0, 0.75, 0.5, 0.25]
    sf = Sampler(steps=4, shift=5.0).sigmas  # Self-Forcing: t = 1000, 937.5, 833.33, 625
    assert [round(1000 * s, 2) for s in sf] == [1000.0, 937.5, 833.33, 625.0]


class Recorder(Method):
    """Records the hooks' calls and checks the ODE path noise against a direct Euler step."""

    name = "recorder"

    def __init__(self):
        super().__init__()
        self.calls, self.euler_ok = [], True

    def denoise(self, x, ctx):
        self.calls.append((ctx.chunk, ctx.step))
        x0 = super().denoise(x, ctx)
        if not ctx.is_last_step:
            v = (x - x0) / ctx.sigma
            euler = x + (ctx.sampler.sigmas[ctx.step + 1] - ctx.sigma) * v
            step = renoise(x0, self.path_noise(x, x0, ctx), ctx.sampler.sigmas[ctx.step + 1])
            self.euler_ok &= torch.allclose(step, euler, atol=1e-5)
        return x0


def test_ode_sampler_is_an_euler_step_and_hooks_run_in_order(toy):
    rec = Recorder()
    rollout(small(toy), rec, PROMPTS, SEEDS, Sampler("ode", steps=3))
    assert rec.calls == [(c, s) for c in range(2) for s in range(3)]
    assert rec.euler_ok


def test_ledger_counts_what_the_loop_did(toy):
    ledger = Ledger()
    result = rollout(small(toy), Base(), PROMPTS, SEEDS, Sampler(steps=3), ledger)
    assert ledger.nfe == 2 * 2 * 3  # videos x chunks x steps
    assert ledger.cache_passes == 2 * 1  # every chunk but the last is committed
    assert ledger.decodes == 2 * 2  # in latent chunks
    assert ledger.frames == result.videos.shape[0] * result.videos.shape[1]
    assert ledger.wall_seconds > 0 and ledger.per_video(2)["nfe"] == 6
