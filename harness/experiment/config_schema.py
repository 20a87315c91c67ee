"""The schema of a composed configuration (sweeps/config.yaml and its groups), and `validate`.

`validate(cfg)` resolves the config (an interpolation that does not resolve is one line naming its
key), then checks every section against the dataclasses below with harness.engine.schema: types, ranges,
unknown keys. The model section is checked against its backend's schema (MODEL_SCHEMAS; a plug-in
backend without one gets its name and backend checked), method.params against the method's Params,
each metric's options against the metric's Options, and train.* (present for `refinery train`)
against TrainSettings. `override_error` turns Hydra's compose errors into the same kind of line.
"""
from __future__ import annotations

import re
from pathlib import Path
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Union, get_args, get_origin

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.errors import UsageError
from harness.engine.schema import check, option, unknown_key
from harness.report.resampling import Resampling
from harness.store.video_format import video_format
from harness.vbench.scores import MODES


@dataclass(frozen=True)
class Paths:
    store: str
    reports: str
    weights: str
    jobs: str | None = None  # submitit's job pickles (harness.experiment.launchers); None: ~/.cache/refinery/submitit


@dataclass(frozen=True)
class Bench:
    batch: int = option(min=1)
    repeats: int = option(min=1)
    warmup: int = option(min=0)
    threads: int | None = option(min=1)


@dataclass(frozen=True)
class RewardHacking:
    reward: str
    held_out: list[str]


@dataclass(frozen=True)
class Leaderboard:
    metrics: list[str] | None = None
    stores: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Report:
    metrics: list[str]
    headline: list[str]
    stats: Resampling
    generation_timings: list[str]
    bench: Bench
    leaderboard: Leaderboard
    baseline: str | None
    reward_hacking: RewardHacking | None
    timing: bool
    gallery: int = option(min=0)
    latex: dict[str, Any] | None = option()


@dataclass(frozen=True)
class VBench:
    mode: str = option(choices=MODES)
    full_info: str | None = option()
    dimensions: list[str] | None = option()
    fps: int = option(min=1)
    crf: int = option(min=0, max=51)  # libx264's range
    python: str | None = option()
    device: str = option()
    cache_dir: str = option()
    torch_home: str = option()
    hf_home: str = option()
    workers: int | None = option(None, min=1)


@dataclass(frozen=True)
class Sampling:
    """sampler.* and a model's own defaults (model.sampling); null: the model's, then the sampler's."""
    steps: int | None = option(None, min=1)
    shift: float | None = option(None, above=0)
    timesteps: list[float] | None = None
    warp: bool | None = None


@dataclass(frozen=True, kw_only=True)
class Sampler(Sampling):
    kind: str = option()  # a SAMPLERS name, checked when the sampler is built


@dataclass(frozen=True)
class Suite:
    """Every source's keys (harness.experiment.suites); each source reads its own."""
    name: str
    version: int
    source: str
    prompts: list[str] | None = None
    path: str | None = None
    full_info: str | None = None
    dimensions: list[str] | None = None
    samples_per_prompt: int | None = option(None, min=1)


@dataclass(frozen=True)
class MethodChoice:
    name: str
    params: dict[str, Any] = field(default_factory=dict)  # checked against the method's Params


@dataclass(frozen=True)
class ToyModel:
    name: str
    backend: str
    device: str
    sampling: Sampling
    num_chunks: int = option(min=1)
    checkpoint: str | None = None
    real_guidance: float | None = option(None, min=0)  # the DMD teacher's CFG when training on this model
    video_format: str = "npy"  # how the store keeps its videos (harness/store/video_format.py)


@dataclass(frozen=True)
class WanModel:
    name: str
    backend: str
    architecture: str
    negative_prompt: str | None  # None: no unconditional branch
    device: str
    dtype: str
    sampling: Sampling
    frames_per_chunk: int = option(min=1)
    num_chunks: int = option(min=1)
    height: int = option(min=1)
    width: int = option(min=1)
    local_attn_size: int = option(min=-1)  # -1: the whole prefix
    sink_size: int = option(min=0)
    max_prompt_tokens: int = option(min=1)
    fps: int = option(min=1)
    real_guidance: float | None = option(None, min=0)
    dmd_scores: dict[str, Any] | None = None
    build: str | None = option(None, choices=("tiny",))  # tiny: random weights from `seed`
    seed: int = option(0, min=0)
    transformer: str | None = None
    text_encoder: str | None = None
    tokenizer: str | None = None
    vae: str | None = None
    origins: dict[str, str] = field(default_factory=dict)
    convert_key: str | None = None
    video_format: str = "npy"  # how the store keeps its videos (harness/store/video_format.py)


@dataclass(frozen=True)
class AnyModel:
    """A plug-in backend's model config: its own keys are the backend's to check."""
    name: str
    backend: str


MODEL_SCHEMAS: dict[str, type] = {"toy": ToyModel, "wan_causal": WanModel}


@dataclass(frozen=True)
class SlurmJob:
    """train.slurm: run the training as one SLURM job of nodes x tasks_per_node ranks (one task per GPU)."""
    nodes: int = option(1, min=1)
    tasks_per_node: int = option(1, min=1)  # ranks per node: its GPUs (gpus_per_node), or gloo ranks on CPUs
    gpus_per_node: int | None = option(None, min=0)
    cpus_per_task: int = option(1, min=1)
    timeout_min: int = option(60, min=1)
    mem_gb: int | None = option(None, min=1)
    partition: str | None = option(None)  # null: the cluster's default partition


@dataclass(frozen=True)
class TrainSettings:
    """train.* of `refinery train` (sweeps/train/)."""
    objective: dict[str, Any]  # {name, params}: the objective's Params check params
    reg_weight: float = option(min=0)
    steps: int = option(min=1)
    batch: int = option(min=1)
    lr: float = option(above=0)
    weight_decay: float = option(min=0)
    betas: tuple[float, ...] = option()  # AdamW's; Self-Forcing's generator and critic use (0, 0.999)
    grad_clip: float = option(min=0)  # 0: no clipping
    ema: float = option(min=0, below=1)  # decay of the weights' average the checkpoint holds; 0: none
    ema_start: int = option(min=0)  # the step the average starts from
    seed: int = option(min=0)
    checkpoint_every: int = option(min=1)
    out: str = option()  # a shipped tag or a .safetensors path
    prompts: str | None = option()  # a prompt file; None: the shapes world's training prompts
    threads: int = option(min=0)  # 0: torch's default
    # paper scale (docs/training.md#training-at-paper-scale); the defaults are one process, one backward pass
    micro_batch: int | None = option(None, min=1)  # videos per backward pass per process; None: the whole batch
    devices: int = option(1, min=1)  # processes (one per GPU; gloo processes on a CPU)
    precision: str = option("model", choices=("model", "mixed"))  # mixed: fp32 master weights, AdamW state
    # None (the default) for both: the paper's recipe on more than one device (fsdp with checkpointing),
    # none without checkpointing on one (harness.experiment.planner.train_settings)
    checkpointing: bool | None = option(None)  # recompute each transformer block in the backward pass
    sharding: str | None = option(None, choices=("none", "fsdp"))  # fsdp: DMD's scores sharded over the processes
    slurm: dict[str, Any] | None = option(None)  # SlurmJob: submit the run as one SLURM job; null: run here

    def __post_init__(self) -> None:
        if not isinstance(self.objective.get("name"), str):
            raise UsageError(f"train.objective={self.objective!r} is malformed; use {{name: reward, params: {{...}}}}")
        if not self.out:
            raise UsageError("train.out is empty; give a shipped tag (e.g. dmd) or a .safetensors path")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UsageError(f"train.betas={list(self.betas)} is out of range; use two numbers in [0, 1), "
                             "e.g. [0.9, 0.999]")


@dataclass(frozen=True)
class RunSettings:
    workers: int = option(min=1)


@dataclass(frozen=True)
class LauncherSettings:
    shards: int = option(min=1)
    shard: int = option(min=0)


@dataclass(frozen=True)
class Root:
    seed: int = option(min=0)
    samples_per_prompt: int = option(min=1)
    batch_size: int = option(min=1)
    threads: int = option(min=1)
    run: RunSettings = option()
    launcher: LauncherSettings = option()
    experiment: str | None = option()
    report: Report = option()
    paths: Paths = option()
    vbench: VBench = option()
    model: dict[str, Any] = option()  # MODEL_SCHEMAS
    sampler: Sampler = option()
    suite: Suite = option()
    method: MethodChoice = option()
    metric: dict[str, dict[str, Any] | None] = option()  # name -> options, each metric's Options
    train: dict[str, Any] | None = None  # TrainSettings
    plugins: list[str] | None = None  # plug-in folders (harness.experiment.plugins)


@dataclass(frozen=True)
class TrainerOptions:
    """`refinery train-reward` and `train-probe`; a key left out keeps the command's default."""
    out: str | None = None
    steps: int | None = option(None, min=1)
    seed: int | None = option(None, min=0)
    threads: int | None = option(None, min=1)


def command_options(command: str, schema: type, overrides: list[str]) -> dict[str, Any]:
    """The key=value options of a command without a Hydra config (train-world, train-reward,
    train-probe), typed as Hydra types a value and checked against `schema`; an `out` must be
    writable. Returns the options given."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from harness.experiment.resources import check_creatable

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise UsageError(f"{command}: {' '.join(str(exc).split())}; give key=value options") from None
    values = {o.key_or_group: o.value() for o in parsed}
    try:
        check(schema, values, "")
    except UsageError as exc:
        raise UsageError(f"{command}: {exc}") from None
    if values.get("out") is not None:
        check_creatable(Path(str(values["out"])), f"{command} out")
    return values


def validate(*cfgs: DictConfig) -> None:
    """Refuse, with one UsageError line, a composed config with an unresolvable interpolation, an
    unknown key, a value of the wrong type or out of range (module docstring). The settings of every
    config are checked before any plug-in's parameters, which import the plug-in (and so torch): a
    bad setting anywhere on the command line is answered at once."""
    from harness.engine.registry import METHODS, METRICS, MODELS

    roots = []
    for cfg in cfgs:
        root = check(Root, resolved(cfg), "")
        MODELS.target(str(root.model.get("backend")))  # an unknown backend: its did-you-mean line first
        check(MODEL_SCHEMAS.get(root.model["backend"], AnyModel), _known_only(root.model, root.model["backend"]),
              "model")
        video_format(str(root.model.get("video_format", "npy")))  # a name that is no format: one line
        if root.train is not None:
            check(TrainSettings, root.train, "train")
        roots.append(root)
    for root in roots:
        check(METHODS.get(root.method.name).Params, root.method.params, "method.params")
        for name, options in root.metric.items():
            METRICS.get(name).check_options(options)


def _known_only(model: dict[str, Any], backend: str) -> dict[str, Any]:
    """A plug-in backend's own keys pass; only its name and backend are checked here."""
    return model if backend in MODEL_SCHEMAS else {k: model[k] for k in ("name", "backend") if k in model}


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain values, every interpolation resolved (Hydra's own node left out)."""
    try:
        return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "a config value"
        reason = str(exc).strip().splitlines()[0]
        raise UsageError(f"{key} does not resolve ({reason}); fix the ${{...}} interpolation or give a plain "
                         "value") from None


# ---------------------------------------------------------------------------------------------
# Hydra's compose errors

_NOT_IN_CONFIG = re.compile(r"Could not override '([^']+)'")
_NO_EQUAL = re.compile(r"Error parsing override '([^']*)' missing EQUAL")


def override_error(exc: Exception, overrides: list[str], compose: Callable[[list[str]], DictConfig]) -> UsageError:
    """Hydra's error about the overrides as one line with the fix: a misspelled key gets the closest
    names (Hydra's advice, `+key=...`, would add the typo to the config), a value the shell split at
    its spaces is named whole and quoted. compose: composes overrides (the closest names' source)."""
    text = " ".join(str(exc).split())
    misspelled, split = _NOT_IN_CONFIG.search(text), _NO_EQUAL.search(text)
    if misspelled:
        advice = re.sub(r" ?To append to your config use \S+", "", text)  # `+key` would add a second key
        return _misspelled(misspelled.group(1), overrides, compose) or UsageError(advice)
    if split and split.group(1) in overrides:
        return _split_value(overrides, overrides.index(split.group(1)))
    return UsageError(f"{text} (see `refinery --help` and sweeps/)")


def _misspelled(key: str, overrides: list[str], compose: Callable[[list[str]], DictConfig]) -> UsageError | None:
    node: Any = compose([o for o in overrides if o.lstrip("+~").partition("=")[0] != key])
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, DictConfig):
            return None
        if part not in node:
            return unknown_key(".".join(parts[:depth]), part, list(node))
        node = node[part]
    return None


def _split_value(overrides: list[str], first: int) -> UsageError:
    start = first - 1 if first and "=" in overrides[first - 1] else first
    end = next((i for i in range(first, len(overrides)) if "=" in overrides[i]), len(overrides))
    words = " ".join(overrides[start:end])
    key, _, value = words.partition("=")
    if start == first:
        return UsageError(f"{overrides[first]!r} is not key=value; write overrides as key=value, and quote a value "
                          "with spaces: 'key=a value'")
    fix = f"'{key}=[{value}]'" if is_list_key(key) else f"'{key}={value}'"
    return UsageError(f"{key}={value!r} was split by the shell at its spaces into {end - start} arguments; "
                      f"quote it: {fix}")


def is_list_key(key: str) -> bool:
    """Whether the schema types this dotted key as a list."""
    kind: Any = Root
    for part in key.lstrip("+~").split("."):
        if not is_dataclass(kind) or part not in {f.name for f in fields(kind)}:
            return False
        kind = _without_none(typing.get_type_hints(kind)[part])
    return get_origin(kind) in (list, tuple)


def _without_none(kind: Any) -> Any:
    if get_origin(kind) in (Union, types.UnionType):
        options = [a for a in get_args(kind) if a is not type(None)]
        return options[0] if len(options) == 1 else kind
    return kind
