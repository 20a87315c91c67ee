"""`refinery train`: a step changes only what is trainable, a killed run resumes to the same weights as
an uninterrupted one, the checkpoint carries its configuration and samples, the training rollout is the
sampling loop, and bad input is refused in one line before any compute."""
import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from conftest import fast_with
from harness.cli import main
from harness.experiment.plans import compose
from harness.errors import UsageError
from harness.engine.registry import VERIFIERS
from harness.engine.samplers import Sampler
from harness.engine.rollout import rollout
from harness.train import trainer
from harness.train.checkpoints import log_path, resume_path
from harness.train.trainer import resolve_training, train, train_step
from harness.verifiers.base import Verifier
from methods.autorefiner import AutoRefiner
from methods.base import Base

TINY = ["model.num_chunks=2", "sampler.steps=2", "train.batch=1", "train.steps=2", "train.checkpoint_every=1"]
CASES = [("lora", "reward"), ("init_noise_refiner", "reward"), ("autorefiner", "reward"), ("autorefiner", "dmd"),
         ("lora", "dmd")]


def config(tmp_path: Path, method: str, objective: str = "reward", *extra: str):
    out = tmp_path / f"{method}_{objective}.safetensors"
    return compose(fast_with([f"+train={objective}", f"method={method}", f"train.out={out}", *extra], TINY))


def tensors(t) -> dict[str, torch.Tensor]:
    """Every tensor a step could touch: the base model and the method's adapted module (adapters and
    the frozen layers they wrap)."""
    named = {f"base.{k}": v for k, v in t.model.state_dict().items()}
    named.update({f"adapted.{k}": v for k, v in t.method.adapted.state_dict().items()})
    return {k: v.detach().clone() for k, v in named.items()}


@pytest.mark.parametrize("method,objective", CASES)
def test_one_step_changes_only_the_trainable_parameters(tmp_path, method, objective):
    t = resolve_training(config(tmp_path, method, objective))
    trainable = {f"adapted.{n}" for n, p in t.method.adapted.named_parameters() if p.requires_grad}
    head = f"adapted.{t.model.output_head}."  # a refiner's own head, trained from zero
    assert trainable and all("lora_" in n or n.startswith(head) for n in trainable)
    before = tensors(t)
    record = train_step(t, torch.optim.AdamW(t.parameters, lr=1e-3), 0)
    after = tensors(t)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= trainable
    assert all(p.grad is None for p in t.model.parameters())
    assert {"loss", "regulariser", "exit_step", "nfe"} <= set(record)
    assert ("reward" in record) == (objective == "reward")


@pytest.mark.slow
@pytest.mark.parametrize("method,objective", [("autorefiner", "dmd"), ("lora", "reward")])
def test_a_killed_run_resumes_to_the_uninterrupted_runs_weights(tmp_path, monkeypatch, method, objective):
    steps = ["train.steps=4", "train.checkpoint_every=2"]
    whole = config(tmp_path / "whole", method, objective, *steps)
    train(whole, progress=False)

    killed = config(tmp_path / "killed", method, objective, *steps)
    calls = []

    def dies_at_the_fourth_step(*args):
        calls.append(args[2])
        if len(calls) == 4:
            raise KeyboardInterrupt  # the kill: step 3 is lost, the checkpoint of step 2 is on disk
        return train_step(*args)

    monkeypatch.setattr(trainer, "train_step", dies_at_the_fourth_step)
    with pytest.raises(KeyboardInterrupt):
        train(killed, progress=False)
    out = Path(killed.train.out)
    assert resume_path(out).is_dir() and len(log_path(out).read_text().splitlines()) == 3
    calls.clear()
    train(killed, progress=False)
    assert calls == [2, 3]  # resumed from the checkpoint of step 2

    a, b = Path(whole.train.out), out
    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        assert sorted(fa.keys()) == sorted(fb.keys())
        for key in fa.keys():
            assert torch.equal(fa.get_tensor(key), fb.get_tensor(key)), key
    logs = [[{k: v for k, v in json.loads(line).items() if k != "seconds"}
             for line in log_path(p).read_text().splitlines()] for p in (a, b)]
    assert logs[0] == logs[1] and [r["step"] for r in logs[0]] == [1, 2, 3, 4]
    assert not resume_path(a).exists() and not resume_path(b).exists()  # removed once complete


def test_an_interrupted_run_resumes_only_with_its_own_settings(tmp_path, monkeypatch):
    calls = []

    def dies_at_the_second_step(*args):
        calls.append(args[2])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return train_step(*args)

    monkeypatch.setattr(trainer, "train_step", dies_at_the_second_step)
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path, "init_noise_refiner", "reward", "train.steps=3"), progress=False)
    with pytest.raises(UsageError, match=r"other settings \(train.lr\)"):
        train(config(tmp_path, "init_noise_refiner", "reward", "train.steps=3", "train.lr=0.01"), progress=False)


def test_one_process_checkpoints_without_a_warning(tmp_path):
    """torch.distributed.checkpoint warns at every save without a process group, even when told that
    one process is the intent (no_dist): a one-process run says nothing of it."""
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        train(config(tmp_path, "lora", "reward", "train.steps=2", "train.checkpoint_every=1"), progress=False)
    assert not [w for w in said if "torch.distributed" in str(w.message)], [str(w.message) for w in said]


def test_checkpoint_metadata_and_a_finished_run(tmp_path, monkeypatch):
    cfg = config(tmp_path, "autorefiner", "reward", "method.params.rank=2", "method.params.history=false")
    path = train(cfg, progress=False)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        assert all("lora_" in k or k.startswith("patch_out.") for k in f.keys())
    assert meta["method"] == "autorefiner" and meta["step"] == "2"
    arch = json.loads(meta["arch"])
    assert arch["rank"] == 2 and arch["history"] is False and arch["timesteps"] == [500]
    stored = json.loads(meta["config"])
    t = resolve_training(cfg)
    assert meta["base_digest"] == t.model.digest() == stored["model"]["digest"]
    assert stored["train"]["objective"]["params"]["verifiers"] == {"world_reward": 1.0}
    assert stored["sampler"]["steps"] == 2
    monkeypatch.setattr(trainer, "train_step", lambda *a: pytest.fail("a finished run trained again"))
    assert train(cfg, progress=False) == path
    with pytest.raises(UsageError, match="not a finished run of these settings"):
        train(config(tmp_path, "autorefiner", "reward", "method.params.rank=4", "method.params.history=false"),
              progress=False)


@pytest.mark.slow
def test_a_trained_checkpoint_samples_through_the_cli(tmp_path):
    path = train(config(tmp_path, "autorefiner", "reward", "train.lr=0.05"), progress=False)
    store = tmp_path / "store"
    run = ["suite=world_smoke", "suite.prompts=[a red circle bouncing]", "samples_per_prompt=1",
           "model.num_chunks=2", "sampler.steps=2", f"paths.store={store}"]
    assert main(["run", *run, "method=autorefiner", f"method.params.checkpoint={path}"]) == 0
    assert main(["run", *run, "method=base"]) == 0
    videos = sorted(store.glob("cells/*/videos/*.npy"))
    assert len(videos) == 2 and videos[0].read_bytes() != videos[1].read_bytes()


def test_a_training_rollout_stopped_at_the_last_step_is_the_sampling_rollout(toy):
    model, sampler = toy.with_chunks(2), Sampler()
    method = AutoRefiner()
    method.prepare(model.spec, sampler, Path("weights"))
    sampled = rollout(model, method, ["a red circle bouncing"], [5], sampler)
    trained = rollout(model, method, ["a red circle bouncing"], [5], sampler, exit_step=sampler.steps - 1)
    assert torch.equal(sampled.latents, trained.latents) and torch.equal(sampled.videos, trained.videos)
    early = rollout(model, Base(), ["a red circle bouncing"], [5], sampler, exit_step=1)
    assert early.ledger.nfe == 2 * 2 and not torch.equal(early.latents, sampled.latents)


class FrozenVerifier(Verifier):
    """A verifier whose score does not carry gradients to the pixels."""

    name = "frozen"
    differentiable = False


def test_bad_training_input_is_one_line_before_any_compute(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(VERIFIERS._entries, "frozen", f"{__name__}:FrozenVerifier")
    out = tmp_path / "never.safetensors"
    for bad, reason in ((["method=base"], "nothing to train"),
                        (["method=bon"], "nothing to train"),
                        (["train=nope", "method=lora"], "unknown train 'nope'"),
                        (["method=lora", "train.steps=0"], "train.steps=0"),
                        (["method=lora", "method.params.rank=0"], "rank=0"),
                        (["method=autorefiner", "method.params.timesteps=[900]"], "timesteps [900]"),
                        (["method=lora", "+train.epochs=3"], "train.epochs is not an option: did you mean 'steps'"),
                        (["method=lora", "train.objective.name=fid"], "unknown objective 'fid'"),
                        (["method=lora", "+train.objective.params.verifiers.frozen=1.0"], "not differentiable"),
                        (["method=lora", "train.objective.params.verifiers.world_reward=0"],
                         "at least one non-zero")):
        assert main(["train", *TINY, f"train.out={out}", *bad]) == 2, bad
        err = capsys.readouterr().err
        assert err.startswith("refinery: error:") and err.count("\n") == 1 and reason in err, err
    assert not out.exists() and not log_path(out).exists()
