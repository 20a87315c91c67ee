"""A method keeps what one rollout needs in that rollout's context (Context.state), not on itself: one
instance serving two rollouts at once, their model calls interleaved one by one, gives the videos that
two instances give."""
import threading
from pathlib import Path

import pytest
import torch

from harness.engine.samplers import Sampler
from harness.engine.rollout import rollout
from methods.autorefiner import AutoRefiner
from methods.cfg import ClassifierFreeGuidance
from methods.pnp import PredictAndPerturb
from methods.sop import SearchOverPath

PROMPTS = [["a red circle bouncing"], ["a blue square and a yellow triangle moving left"]]
SEEDS = [[1], [2]]


class Alternating:
    """Wraps a model so that two threads' denoise and commit calls take strict turns."""

    def __init__(self, model):
        self.model, self.turn, self.done = model, 0, set()
        self.cond = threading.Condition()
        self.owner = {}

    def __getattr__(self, name):
        return getattr(self.model, name)

    def _take_turn(self, call, *args):
        me = self.owner[threading.get_ident()]
        with self.cond:
            self.cond.wait_for(lambda: self.turn == me or (1 - me) in self.done)
            out = call(*args)
            self.turn = 1 - me
            self.cond.notify_all()
        return out

    def denoise(self, *args):
        return self._take_turn(self.model.denoise, *args)

    def commit(self, *args):
        return self._take_turn(self.model.commit, *args)


def interleaved(model, method, sampler):
    shared = Alternating(model)
    results = [None, None]

    def run(i):
        shared.owner[threading.get_ident()] = i
        results[i] = rollout(shared, method, PROMPTS[i], SEEDS[i], sampler).videos
        with shared.cond:
            shared.done.add(i)
            shared.cond.notify_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.parametrize("make", [lambda: ClassifierFreeGuidance(scale=3.0),
                                  lambda: PredictAndPerturb(iterations=1, tau=0.1),
                                  lambda: SearchOverPath(n=2),
                                  lambda: AutoRefiner(checkpoint="dmd")],
                         ids=["cfg", "pnp", "sop", "autorefiner"])
def test_one_instance_serves_two_rollouts_at_once(toy, make):
    model, sampler = toy.with_chunks(2), Sampler(steps=4)
    method = make()
    method.prepare(model.spec, sampler, Path("weights"))
    together = interleaved(model, method, sampler)
    for i in (0, 1):
        alone = make()
        alone.prepare(model.spec, sampler, Path("weights"))
        assert torch.equal(together[i], rollout(model, alone, PROMPTS[i], SEEDS[i], sampler).videos)
