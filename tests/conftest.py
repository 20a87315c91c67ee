import io
import os
import signal
import subprocess
import sys
import traceback
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The in-process rollouts here are tiny: one thread is as fast, and never contends for a busy core.
torch.set_num_threads(1)

# A cell small enough for subprocess tests: 4 prompts, 1 seed, 2 chunks, 2 steps.
FAST = ["suite=world_smoke", "samples_per_prompt=1", "model.num_chunks=2", "sampler.steps=2", "batch_size=4"]


_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def refinery_here(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`refinery ARGS` run by the CLI's `main` in this process, answered as `subprocess.run` answers:
    exit code, stdout, stderr (an uncaught exception: its traceback, code 1); `cwd` (default: the
    repository) and `env` (default: this process's) as subprocess.run takes them. A CLI process spends
    ~4 s importing torch; tests of what a command prints, writes and refuses do not need one (the
    process boundary itself is tested in test_front_door). Torch's thread count, signal handlers, the working
    folder and the environment are restored afterwards, as a process would leave them."""
    from harness.cli import main

    out, err = io.StringIO(), io.StringIO()
    threads, folder, environ = torch.get_num_threads(), os.getcwd(), dict(os.environ)
    handlers = {sig: signal.getsignal(sig) for sig in _HANDLED}  # torch's elastic launcher sets its own
    try:
        os.chdir(cwd or ROOT)
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        torch.set_num_threads(threads)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        os.chdir(folder)
        os.environ.clear()
        os.environ.update(environ)
    return subprocess.CompletedProcess(["refinery", *args], code, out.getvalue(), err.getvalue())


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
