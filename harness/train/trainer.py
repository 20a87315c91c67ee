"""`refinery train`: train a method's adapter on the embedded model (AutoRefiner Algorithm 1).

Configuration (Hydra): the root config with the `train` group (sweeps/train/<objective>.yaml). Model,
sampler and method are those of sampling; method.params set the architecture (rank, alpha, switches,
refined timesteps); its `checkpoint` is what sampling loads and is not read here: training starts
from the zero-initialised adapter. train.*: objective {name, params}, reg_weight, steps, batch, lr,
weight_decay, betas, grad_clip, ema and ema_start, seed, checkpoint_every, out (a shipped tag or a path),
threads; at paper scale micro_batch, devices, precision, checkpointing, sharding, slurm
(harness.train.distributed, harness.train.scale; docs/training.md#training-at-paper-scale).

One step: draw `batch` training prompts, their video seeds, an exit step (among the method's
exit_steps) and the objective's random numbers from a generator keyed by (seed, step); this rank
takes its rows of that draw, in micro-batches (harness.train.distributed); roll each out through
harness.engine.rollout with that exit step (the one loop, the keyed noise source, a ledger); loss =
objective + reg_weight * regulariser (½||Δε||² of the refinements that carry gradient), weighted by the
micro-batch's share of the batch, one backward pass each; the gradients summed over the ranks; one
AdamW step on the adapter; then
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from harness.train.adapter_files import FORMAT, checkpoint_path, read_metadata, save_adapter
from harness.train.adapters import TrainedMethod
from harness.experiment.config_schema import SlurmJob, TrainSettings, resolved, validate
from harness.errors import UsageError
from harness.store.files import canonical_json
from harness.engine.ledger import Ledger, work_clock
from harness.models.base import VideoModel
from harness.engine.noise import key_seed
from harness.experiment.launchers import check_launcher
from harness.experiment.planner import check_train_memory, train_settings
from harness.experiment.resources import check_creatable
from harness.engine.samplers import Sampler
from harness.engine.rollout import rollout
from harness.engine.schema import check
from harness.train.checkpoints import (TrainingLog, differing, load_step, log_path, read_run, refuse_old_resume,
                                      remove_steps, save_step, section, step_folders)
from harness.train.distributed import Split, World, join_world, launched, start_ranks, submit_to_slurm
from harness.train.objectives import Draws, Objective, pick
from harness.train.scale import MasterWeights, enable_checkpointing, mesh_of_ranks, shard_generator, shard_scores

# settings that do not change what is trained (how the effective batch is computed: up to round-off)
SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"  # the sweeps' one
RUNTIME_KEYS = ("threads", "checkpoint_every", "out", "micro_batch", "devices", "checkpointing", "sharding", "slurm")


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
    world: World = World()
    masters: MasterWeights | None = None  # train.precision=mixed: the fp32 weights the optimiser steps

    @property
    def optimised(self) -> list[torch.nn.Parameter]:
        """What AdamW steps: the fp32 master weights (mixed precision) or the parameters themselves."""
        return self.masters.weights if self.masters else self.parameters

    def split(self) -> Split:
        s = self.settings
        return Split.of(s.batch, s.micro_batch or s.batch, self.world)

    @property
    def identity(self) -> dict[str, Any]:
        """What decides the trained weights: a resume must match it exactly."""
        return identity(self.config)


def identity(config: dict[str, Any]) -> dict[str, Any]:
    train = {k: v for k, v in config["train"].items() if k not in RUNTIME_KEYS}
    if train.get("precision") == "model":  # the default, which files older than the setting were trained with
        del train["precision"]
    return {**config, "train": train}


def resolve_training(cfg: DictConfig) -> Training:
    """Validate a composed training config and build the run; every bad input fails here."""
    from harness.experiment.pipeline import load_model, sampler_from
    from harness.engine.registry import METHODS, OBJECTIVES
    from harness.experiment.suites import read_prompt_file
    from harness.world.prompts import train_prompts

    settings = checked_settings(cfg)
    world = join_world()
    check_processes(settings, world)
    check_creatable(planned_out(cfg), "train.out")  # before any compute
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
    if settings.checkpointing:
        enable_checkpointing(method.adapted)
    config = {"model": {"name": cfg.model.name, "checkpoint": cfg.model.get("checkpoint"),
                        "num_chunks": model.spec.num_chunks, "digest": model.digest()},
              "sampler": asdict(sampler),
              "method": {"name": method.name, "version": method.version, "arch": method.arch},
              "train": {**asdict(settings), "objective": objective.describe()}}
    named = {n: p for n, p in method.adapted.named_parameters() if p.requires_grad}
    t = Training(model, method, sampler, objective, settings,
                 checkpoint_path(method.name, settings.out, model.spec.name),
                 config, prompts, method.trainable_parameters(), world,
                 MasterWeights(named) if settings.precision == "mixed" else None)
    scale_objective(t)
    return t


def scale_objective(t: Training) -> None:
    """The generator's frozen base and the objective's own networks (DMD's scores): sharded over the
    ranks, checkpointed, trained in mixed precision, as the settings say."""
    s = t.settings
    if s.sharding == "fsdp" and t.world.size > 1:
        mesh = mesh_of_ranks()
        shard_generator(t.model.trainable, mesh)
        shard_scores(t.objective, s.precision == "mixed", shared=t.model.trainable, mesh=mesh)
    if s.checkpointing:
        fake = getattr(t.objective, "fake", None)
        if fake is not None:
            enable_checkpointing(fake.module)


def check_processes(settings: TrainSettings, world: World) -> None:
    if world.size > 1 and settings.devices not in (1, world.size):
        raise UsageError(f"train.devices={settings.devices} but the launcher started {world.size} processes; "
                         f"drop train.devices or set it to {world.size}")
    check_ranks(settings.batch, world.size)


def checked_settings(cfg: DictConfig) -> TrainSettings:
    if cfg.get("train") is None:
        raise UsageError("no train config; use `refinery train [train=reward|dmd] method=... [train.steps=...]`")
    validate(cfg)  # every section typed, train.* against TrainSettings
    settings = check(TrainSettings, resolved(cfg)["train"], "train")
    chosen = train_settings(asdict(settings))  # sharding and checkpointing left to the device count
    return replace(settings, sharding=chosen["sharding"], checkpointing=chosen["checkpointing"])


def start(cfg: DictConfig, argv: list[str]) -> Path | None:
    """`refinery <argv>` (a train command composed into `cfg`): in this process, as train.devices ranks
    on this host (the command again under torchrun's launcher; None then), or as one SLURM job
    (train.slurm); a process that a launcher started is one rank already. Settings are checked first,
    in one line. Returns the adapter file."""
    settings = checked_settings(cfg)
    out = planned_out(cfg)
    check_creatable(out, "train.out")
    if launched():
        return train(cfg)
    if settings.slurm is not None:
        job = check(SlurmJob, settings.slurm, "train.slurm")
        check_ranks(settings.batch, job.nodes * job.tasks_per_node)
        # the sweeps' preflight: SLURM's programs on PATH, a known partition, an output its nodes can see
        check_launcher(OmegaConf.create({"_target_": SLURM_LAUNCHER, "partition": job.partition}), out.parent)
        submit_to_slurm(job, train, (cfg, False), out.with_name(out.stem + ".slurm") / "%j")
        return out
    if settings.devices > 1:
        check_ranks(settings.batch, settings.devices)
        code = start_ranks(settings.devices, argv)
        if code:
            raise SystemExit(code)
        return None  # rank 0 has said where the adapter is
    return train(cfg)


def check_ranks(batch: int, ranks: int) -> None:
    if batch < ranks:
        raise UsageError(f"train.batch={batch} is smaller than the {ranks} processes; give every process a video "
                         "at least (train.batch >= the number of processes)")


def planned_out(cfg: DictConfig) -> Path:
    return checkpoint_path(cfg.method.name, cfg.train.out, cfg.model.name)


def train(cfg: DictConfig, progress: bool = True) -> Path:
    """Train (or resume, or find complete) the run `cfg` describes; returns the adapter file. A run
    that cannot fit the GPU's memory (harness.experiment.planner) is refused before anything loads."""
    check_train_memory(cfg)
    return run_training(resolve_training(cfg), progress)


def run_training(t: Training, progress: bool = True) -> Path:
    """Train (or resume, or find complete) a resolved run; returns the adapter file. On many ranks
    every rank trains, and only rank 0 writes the log and the checkpoints."""
    s = t.settings
    if s.threads:
        torch.set_num_threads(s.threads)
    optimizer = torch.optim.AdamW(t.optimised, lr=s.lr, weight_decay=s.weight_decay, betas=s.betas)
    average = Average(s.ema, s.ema_start)
    start = restore(t, optimizer, average)
    if start == s.steps:
        return t.out
    writer = t.world.is_writer
    log = TrainingLog(log_path(t.out), keep=start) if writer else None
    bar = tqdm(total=s.steps, initial=start, unit="step", disable=not (progress and writer),
               desc=f"train {t.method.name} ({t.objective.name})")
    try:
        for step in range(start, s.steps):
            record = train_step(t, optimizer, step)
            if log:
                log.append(record)
            average.update(record["step"], adapter_state(t))
            bar.update()
            bar.set_postfix({k: f"{record[k]:.4g}" for k in ("loss", "reward", "regulariser") if k in record})
            if record["step"] % s.checkpoint_every == 0 or record["step"] == s.steps:
                save(t, optimizer, average, record["step"])
    finally:
        bar.close()
        if log:
            log.close()
    if writer:
        remove_steps(t.out)
    t.world.barrier()
    return t.out


def train_step(t: Training, optimizer: torch.optim.Optimizer, step: int) -> dict[str, Any]:
    """One training step (module docstring) over this rank's micro-batches (harness.train.distributed);
    returns its log record, the same on every rank."""
    s = t.settings
    began = work_clock()
    gen = torch.Generator().manual_seed(key_seed(s.seed, "train", step))
    prompts, seeds, exit_step = draw(t, gen, step)
    draws = t.objective.draw(t.model.spec, s.batch, gen)
    split = t.split()
    ledger = Ledger()
    optimizer.zero_grad(set_to_none=True)
    sums = backward_passes(t, split, prompts, seeds, exit_step, draws, ledger)
    t.world.sum_gradients(t.parameters)
    if t.masters:
        t.masters.take_gradients()
    grad_norm = torch.nn.utils.clip_grad_norm_(t.optimised, s.grad_clip or math.inf)
    optimizer.step()
    if t.masters:
        t.masters.give_weights()
    sums.update(t.objective.update(draws, Fresh(t, step), split))
    counts = {"nfe": ledger.nfe, "refiner_calls": ledger.refiner_calls}
    sums = t.world.sum_figures({**sums, **counts})
    return {"step": step + 1, **{k: v for k, v in sums.items() if k not in counts}, "grad_norm": grad_norm.item(),
            "exit_step": exit_step, **{k: int(sums[k]) for k in counts}, "seconds": work_clock() - began}


def backward_passes(t: Training, split: Split, prompts: list[str], seeds: list[int], exit_step: int,
                    draws: Draws, ledger: Ledger) -> dict[str, float]:
    """This rank's micro-batches of the step, one rollout and backward pass each, each loss weighted
    by its share of the effective batch; the log's figures, weighted alike."""
    s = t.settings
    sums: dict[str, float] = {}
    for rows in split.parts:
        mine = [prompts[i] for i in rows]
        result = rollout(t.model, t.method, mine, [seeds[i] for i in rows], t.sampler, ledger,
                         exit_step=exit_step, decode=t.objective.needs_videos)
        loss, figures = t.objective.loss(result, mine, pick(draws, rows))
        reg = t.method.regulariser(result)
        total = loss if reg is None else loss + s.reg_weight * reg
        share = split.share(rows)
        (total * share).backward()
        figures = {"loss": total.item(), "objective": loss.item(), "regulariser": 0.0 if reg is None else reg.item(),
                   **figures}
        for k, v in figures.items():
            sums[k] = sums.get(k, 0.0) + share * v
    return sums


def draw(t: Training, gen: torch.Generator, *key: object) -> tuple[list[str], list[int], int]:
    """A training rollout's prompts, video seeds (keyed by `key`) and exit step for the whole effective
    batch, drawn from `gen`."""
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

    def draw(self, k: int, rows: list[int]) -> tuple[list[str], list[int], int]:
        """The k-th fresh rollout's prompts and video seeds of `rows` (of its whole-batch draw), its exit step."""
        t = self.t
        gen = torch.Generator().manual_seed(key_seed(t.settings.seed, "fresh", self.step, k))
        prompts, seeds, exit_step = draw(t, gen, "fresh", self.step, k)
        return [prompts[i] for i in rows], [seeds[i] for i in rows], exit_step

    def __call__(self, ks: list[int], rows: list[int]) -> list[tuple[torch.Tensor, list[str]]]:
        """For each k of ks, the latents of the k-th fresh rollout's `rows` and their prompts. Those that
        exit at the same step are one batched rollout: every video's noise is keyed by its own seed, so
        batching changes no video beyond float rounding."""
        t = self.t
        drawn = {k: self.draw(k, rows) for k in ks}
        latents: dict[int, torch.Tensor] = {}
        for exit_step in dict.fromkeys(exit for _, _, exit in drawn.values()):
            together = [k for k in ks if drawn[k][2] == exit_step]
            prompts = [p for k in together for p in drawn[k][0]]
            seeds = [seed for k in together for seed in drawn[k][1]]
            with frozen(t.parameters):
                result = rollout(t.model, t.method, prompts, seeds, t.sampler, exit_step=exit_step, decode=False)
            latents.update(zip(together, result.latents.detach().split(len(rows))))
        return [(latents[k], drawn[k][0]) for k in ks]


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


def adapter_state(t: Training) -> dict[str, torch.Tensor]:
    """The trained weights: the fp32 masters under mixed precision, else the adapter's own tensors."""
    return t.masters.state() if t.masters else t.method.adapter_state()


def trained_state(t: Training, optimizer: torch.optim.Optimizer, average: Average) -> dict[str, torch.Tensor]:
    """What a step folder holds (harness.train.checkpoints), as flat tensors: the trained weights,
    AdamW's state of them by position, their average, and the objective's state (sharded where its
    networks are)."""
    state = {f"adapter/{k}": v for k, v in adapter_state(t).items()}
    for i, p in enumerate(t.optimised):
        state.update({f"adapter_optimizer/{i}/{k}": v for k, v in optimizer.state.get(p, {}).items()})
    state.update({f"average/{k}": v for k, v in (average.state or {}).items()})
    return {**state, **objective_state(t)}


def objective_state(t: Training) -> dict[str, torch.Tensor]:
    return {f"objective/{k}": v for k, v in t.objective.state_dict().items()}


def save(t: Training, optimizer: torch.optim.Optimizer, average: Average, step: int) -> None:
    """The step's folder first, every rank writing its shards (harness.train.checkpoints), then the
    adapter file (harness.train.adapter_files), whole, by rank 0: they resume on any number of ranks."""
    save_step(t.out, step, trained_state(t, optimizer, average), t.identity, t.world)
    if t.world.is_writer:
        save_adapter(t.out, average.of(adapter_state(t)), t.method.name, t.method.arch, t.model.spec.name,
                     t.config["model"]["digest"], step, t.config)


def restore(t: Training, optimizer: torch.optim.Optimizer, average: Average) -> int:
    """The step to start from: the newest step folder's, s.steps for a finished run, or 0."""
    refuse_old_resume(t.out)
    folders = step_folders(t.out)
    if folders:
        return resume(t, optimizer, average, folders[-1])
    if not t.out.exists():
        return 0
    meta = read_metadata(t.out)
    done = meta.get("format") == FORMAT and int(meta.get("step", -1)) == t.settings.steps
    if done and canonical_json(identity(json.loads(meta["config"]))) == canonical_json(t.identity):
        return t.settings.steps
    raise UsageError(f"{t.out} exists and is not a finished run of these settings, and there is no resume state "
                     "to continue it; choose another train.out, or delete it to train from the start")


def resume(t: Training, optimizer: torch.optim.Optimizer, average: Average, folder: Path) -> int:
    """Load a step folder into the run (on any number of ranks); returns its step."""
    run, ours = read_run(folder), json.loads(canonical_json(t.identity))  # as JSON: tuples are lists
    if run["identity"] != ours:
        raise UsageError(f"{folder} belongs to a training run with other settings "
                         f"({', '.join(differing(run['identity'], ours))}); choose another train.out, "
                         f"or delete {folder.parent} and its checkpoint to start over")
    state = load_step(folder, objective_state(t))
    adapter = section(state, "adapter/")
    t.method.load_adapter_state(adapter, str(folder))
    if t.masters:
        t.masters.load(adapter)
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in section(state, "adapter_optimizer/").items():
        i, name = key.split("/")
        moments.setdefault(int(i), {})[name] = value
    optimizer.load_state_dict({"state": moments, "param_groups": optimizer.state_dict()["param_groups"]})
    t.objective.load_state_dict(section(state, "objective/"))
    average.state = section(state, "average/") or None
    return int(run["step"])
