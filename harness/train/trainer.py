"""`refinery train`: train a method's adapter on the embedded model (AutoRefiner Algorithm 1).

Configuration (Hydra): the root config with the `train` group (sweeps/train/<objective>.yaml). Model,
sampler and method are those of sampling; method.params set the architecture (rank, alpha, switches,
refined timesteps); its `checkpoint` is what sampling loads and is not read here: training starts
from the zero-initialised adapter. train.*: objective {name, params}, reg_weight, steps, batch, lr,
weight_decay, betas, grad_clip, ema and ema_start, seed, checkpoint_every, out (a shipped tag or a path),
threads.

One step: draw `batch` training prompts, their video seeds and an exit step (among the method's
exit_steps) from a generator keyed by (seed, step); roll them out through harness.engine.rollout with that
exit step (the one loop, the keyed noise source, a ledger); loss = objective + reg_weight *
regulariser (½||Δε||² of the refinements that carry gradient); one AdamW step on the adapter; then
the objective's own update (DMD's fake score), which may draw fresh rollouts of the updated method
(`Fresh`: prompts, seeds and exit step keyed by (seed, step, k), rolled out without gradient). All
randomness of a step is keyed by its index, so a resumed run repeats exactly what an uninterrupted
one does once the adapter, the optimiser and the objective's state (and the average) are restored
(harness.train.checkpoints). With `ema` > 0 the checkpoint holds an exponential moving average of the
trained weights from step `ema_start` on (Self-Forcing ships its generator's EMA, 0.99 from step 200).

`run_training` runs any resolved `Training`; `refinery distill` (harness.models.toy_distill) builds
one whose method is the generator being distilled.
"""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from harness.train.adapter_files import FORMAT, checkpoint_path, read_metadata, save_adapter
from harness.train.adapters import TrainedMethod
from harness.experiment.config_schema import TrainSettings, resolved, validate
from harness.errors import UsageError
from harness.store.files import canonical_json
from harness.engine.ledger import Ledger, work_clock
from harness.models.base import VideoModel
from harness.engine.noise import key_seed
from harness.experiment.resources import check_creatable
from harness.engine.context import RolloutResult
from harness.engine.samplers import Sampler
from harness.engine.rollout import rollout
from harness.engine.schema import check
from harness.train.checkpoints import TrainingLog, load_resume, log_path, resume_path, save_resume
from harness.train.objectives import Objective

RUNTIME_KEYS = ("threads", "checkpoint_every", "out")  # settings that do not change what is trained


@dataclass
class Training:
    """A resolved training run: everything validated and built, before any compute."""

    model: VideoModel
    method: TrainedMethod
    sampler: Sampler
    objective: Objective
    settings: TrainSettings
    out: Path
    config: dict[str, Any]  # the resolved training configuration, stored in every checkpoint
    prompts: list[str]
    parameters: list[torch.nn.Parameter]

    @property
    def identity(self) -> dict[str, Any]:
        """What decides the trained weights: a resume must match it exactly."""
        return identity(self.config)


def identity(config: dict[str, Any]) -> dict[str, Any]:
    return {**config, "train": {k: v for k, v in config["train"].items() if k not in RUNTIME_KEYS}}


def differing(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += differing(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(prefix + k)
    return keys


def resolve_training(cfg: DictConfig) -> Training:
    """Validate a composed training config and build the run; every bad input fails here."""
    from harness.experiment.pipeline import load_model, sampler_from
    from harness.engine.registry import METHODS, OBJECTIVES
    from harness.experiment.suites import read_prompt_file
    from harness.world.prompts import train_prompts

    if cfg.get("train") is None:
        raise UsageError("no train config; use `refinery train [train=reward|dmd] method=... [train.steps=...]`")
    validate(cfg)  # every section typed, train.* against TrainSettings
    settings = check(TrainSettings, resolved(cfg)["train"], "train")
    check_creatable(checkpoint_path(cfg.method.name, settings.out, cfg.model.name), "train.out")  # before any compute
    method_cls = METHODS.get(cfg.method.name)
    if not (isinstance(method_cls, type) and issubclass(method_cls, TrainedMethod)):
        trainable = [n for n in METHODS.names() if issubclass(METHODS.get(n), TrainedMethod)]
        raise UsageError(f"method {cfg.method.name!r} has nothing to train; train one of {', '.join(trainable)}")
    params = OmegaConf.to_container(cfg.method.get("params") or {}, resolve=True)
    method = method_cls(**{**params, "checkpoint": None})  # training starts from the zero-initialised adapter
    objective = OBJECTIVES.get(settings.objective["name"])(**(settings.objective.get("params") or {}))
    model = load_model(cfg)
    sampler = sampler_from(cfg)
    weights_dir = Path(cfg.paths.weights)
    prompts = read_prompt_file(Path(settings.prompts)) if settings.prompts else train_prompts()
    model.validate_prompts(prompts)
    method.prepare(model.spec, sampler, weights_dir)
    objective.setup(model, sampler, weights_dir)
    model.requires_grad_(False)  # the base model is frozen: only what the method adds is trained
    method.bind(model, training=True)
    config = {"model": {"name": cfg.model.name, "checkpoint": cfg.model.get("checkpoint"),
                        "num_chunks": model.spec.num_chunks, "digest": model.digest()},
              "sampler": asdict(sampler),
              "method": {"name": method.name, "version": method.version, "arch": method.arch},
              "train": {**asdict(settings), "objective": objective.describe()}}
    return Training(model, method, sampler, objective, settings,
                    checkpoint_path(method.name, settings.out, model.spec.name),
                    config, prompts, method.trainable_parameters())


def train(cfg: DictConfig, progress: bool = True) -> Path:
    """Train (or resume, or find complete) the run `cfg` describes; returns the adapter file. A run
    that cannot fit the GPU's memory (harness.experiment.planner) is refused before anything loads."""
    from harness.experiment.planner import check_train_memory

    check_train_memory(cfg)
    return run_training(resolve_training(cfg), progress)


def run_training(t: Training, progress: bool = True) -> Path:
    """Train (or resume, or find complete) a resolved run; returns the adapter file."""
    s = t.settings
    if s.threads:
        torch.set_num_threads(s.threads)
    optimizer = torch.optim.AdamW(t.parameters, lr=s.lr, weight_decay=s.weight_decay, betas=s.betas)
    average = Average(s.ema, s.ema_start)
    start = restore(t, optimizer, average)
    if start == s.steps:
        return t.out
    log = TrainingLog(log_path(t.out), keep=start)
    bar = tqdm(total=s.steps, initial=start, unit="step", disable=not progress,
               desc=f"train {t.method.name} ({t.objective.name})")
    try:
        for step in range(start, s.steps):
            record = train_step(t, optimizer, step)
            log.append(record)
            average.update(record["step"], t.method.adapter_state())
            bar.update()
            bar.set_postfix({k: f"{record[k]:.4g}" for k in ("loss", "reward", "regulariser") if k in record})
            if record["step"] % s.checkpoint_every == 0 or record["step"] == s.steps:
                save(t, optimizer, average, record["step"])
    finally:
        bar.close()
        log.close()
    resume_path(t.out).unlink(missing_ok=True)
    return t.out


def train_step(t: Training, optimizer: torch.optim.Optimizer, step: int) -> dict[str, Any]:
    """One training step (module docstring); returns its log record."""
    s = t.settings
    began = work_clock()
    gen = torch.Generator().manual_seed(key_seed(s.seed, "train", step))
    prompts, seeds, exit_step = draw(t, gen, step)
    ledger = Ledger()
    result = rollout(t.model, t.method, prompts, seeds, t.sampler, ledger, exit_step=exit_step,
                     decode=t.objective.needs_videos)
    loss, figures = t.objective.loss(result, prompts, gen)
    reg = t.method.regulariser(result)
    total = loss if reg is None else loss + s.reg_weight * reg
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(t.parameters, s.grad_clip or math.inf)
    optimizer.step()
    figures.update(t.objective.update(result, prompts, gen, Fresh(t, step)))
    return {"step": step + 1, "loss": total.item(), "objective": loss.item(),
            "regulariser": 0.0 if reg is None else reg.item(), **figures, "grad_norm": grad_norm.item(),
            "exit_step": exit_step, "nfe": ledger.nfe, "refiner_calls": ledger.refiner_calls,
            "seconds": work_clock() - began}


def draw(t: Training, gen: torch.Generator, *key: object) -> tuple[list[str], list[int], int]:
    """A training rollout's prompts, video seeds (keyed by `key`) and exit step, drawn from `gen`."""
    s = t.settings
    prompts = [t.prompts[i] for i in torch.randint(len(t.prompts), (s.batch,), generator=gen).tolist()]
    seeds = [key_seed(s.seed, "video", *key, i) for i in range(s.batch)]
    exits = t.method.exit_steps(t.sampler)
    return prompts, seeds, exits[int(torch.randint(len(exits), (1,), generator=gen))]


@contextmanager
def frozen(parameters: list[torch.nn.Parameter]) -> Iterator[None]:
    """The method's parameters without gradient: a rollout then records no graph."""
    for p in parameters:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in parameters:
            p.requires_grad_(True)


class Fresh:
    """Fresh training rollouts of the method as it is now, for an objective's own updates (DMD's critic
    steps on new samples, as Self-Forcing draws them): the k-th is keyed by (seed, step, k)."""

    def __init__(self, t: Training, step: int):
        self.t, self.step = t, step

    def __call__(self, k: int) -> tuple[RolloutResult, list[str]]:
        t = self.t
        gen = torch.Generator().manual_seed(key_seed(t.settings.seed, "fresh", self.step, k))
        prompts, seeds, exit_step = draw(t, gen, "fresh", self.step, k)
        with frozen(t.parameters):
            return rollout(t.model, t.method, prompts, seeds, t.sampler, exit_step=exit_step,
                           decode=t.objective.needs_videos), prompts


class Average:
    """The exponential moving average of the trained weights from step `start` on (decay 0: none)."""

    def __init__(self, decay: float, start: int):
        self.decay, self.start = decay, start
        self.state: dict[str, torch.Tensor] | None = None

    def update(self, step: int, weights: dict[str, torch.Tensor]) -> None:
        if not self.decay or step < self.start:
            return
        if self.state is None:
            self.state = {name: value.clone() for name, value in weights.items()}
            return
        for name, value in weights.items():
            self.state[name].lerp_(value, 1 - self.decay)

    def of(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What the checkpoint holds: the average once it has started, else the weights."""
        return weights if self.state is None else self.state


def save(t: Training, optimizer: torch.optim.Optimizer, average: Average, step: int) -> None:
    """The resume state first (harness.train.checkpoints), then the adapter file (harness.train.adapter_files)."""
    adapter = t.method.adapter_state()
    save_resume(resume_path(t.out), {"step": step, "identity": t.identity, "adapter": adapter,
                                     "average": average.state, "optimizer": optimizer.state_dict(),
                                     "objective": t.objective.state_dict()})
    save_adapter(t.out, average.of(adapter), t.method.name, t.method.arch, t.model.spec.name,
                 t.config["model"]["digest"], step, t.config)


def restore(t: Training, optimizer: torch.optim.Optimizer, average: Average) -> int:
    """The step to start from: the resume state's, s.steps for a finished run, or 0."""
    resume = resume_path(t.out)
    state = load_resume(resume)
    if state is not None:
        if canonical_json(state["identity"]) != canonical_json(t.identity):
            raise UsageError(f"{resume} belongs to a training run with other settings "
                             f"({', '.join(differing(state['identity'], t.identity))}); choose another train.out, "
                             "or delete it and its checkpoint to start over")
        t.method.load_adapter_state(state["adapter"], str(resume))
        optimizer.load_state_dict(state["optimizer"])
        t.objective.load_state_dict(state["objective"])
        average.state = state["average"]
        return state["step"]
    if not t.out.exists():
        return 0
    meta = read_metadata(t.out)
    done = meta.get("format") == FORMAT and int(meta.get("step", -1)) == t.settings.steps
    if done and canonical_json(identity(json.loads(meta["config"]))) == canonical_json(t.identity):
        return t.settings.steps
    raise UsageError(f"{t.out} exists and is not a finished run of these settings, and there is no resume state "
                     "to continue it; choose another train.out, or delete it to train from the start")
