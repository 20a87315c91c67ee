import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The in-process rollouts here are tiny: one thread is as fast, and never contends for a busy core.
torch.set_num_threads(1)

# A cell small enough for subprocess tests: 4 prompts, 1 seed, 2 chunks, 2 steps.
FAST = ["suite=world_smoke", "samples_per_prompt=1", "model.num_chunks=2", "sampler.steps=2", "batch_size=4"]


def fast_with(overrides: list[str], base: list[str] = FAST) -> list[str]:
    """FAST (or `base`) but the keys `overrides` set, then `overrides`: a key is given once (a key
    given twice with two values is refused)."""
    given = {o.partition("=")[0].lstrip("+~") for o in overrides}
    return [*(o for o in base if o.partition("=")[0] not in given), *overrides]


@pytest.fixture(params=[1, 0], ids=["local-attention", "full-prefix"])
def randomized_toy(request):
    """An untrained toy model whose zero-initialised output layers are randomised, so every path
    through the network (history, time, text) changes the output; with local attention (the
    shipped setting) and with attention over the whole prefix."""
    from harness.models.toy import ToyConfig, ToyVideoModel

    torch.manual_seed(0)
    model = ToyVideoModel(ToyConfig(context_chunks=request.param)).eval()
    for name, p in model.named_parameters():
        if "modulation" in name or "patch_out" in name:
            torch.nn.init.normal_(p, std=0.05)
    return model


@pytest.fixture(scope="session")
def toy():
    """The default embedded base, `toy` = toy_sf (the Self-Forcing-distilled toy)."""
    from harness.models.toy import load_toy

    return load_toy()


@pytest.fixture(scope="session")
def toy_flow():
    """The flow-matching toy, the distilled bases' teacher."""
    from harness.models.toy import load_toy

    return load_toy("toy_flow")


@pytest.fixture(scope="session")
def wan_tiny():
    """The wan_causal backend at its tiny random-weight size (sweeps/model/wan_tiny.yaml)."""
    from harness.experiment.plans import compose
    from harness.experiment.pipeline import load_model

    return load_model(compose(["model=wan_tiny"]))


def prepared_rollout(model, method, prompts, seeds, sampler, ledger=None):
    """A rollout of a method prepared as the pipeline prepares it (resolve_run) before any compute."""
    from harness.engine.rollout import rollout

    method.prepare(model.spec, sampler, Path("weights"))
    return rollout(model, method, prompts, seeds, sampler, ledger)
