"""`refinery plan`: what a sweep or a training run will cost, before anything runs, without torch.

Counts (videos, NFE, cache passes, verifier calls, decodes) come from each method's declared cost
(harness.engine.cost, the declaration beside the hooks that spend it; tests/test_planner.py checks it
against the ledger); times, storage and memory from the model's calibration table
(sweeps/calibration/<model>.yaml), which says whether its figures were measured here or taken from
published ones. A sweep or a training run whose peak memory per GPU exceeds the GPU's is refused
(UsageError, exit 2) with the estimate and what to change.

Training memory per GPU (`train_memory`): parameters held (frozen weights, the trainable adapter or
fake score with fp32 master weights, gradients and AdamW state), divided by the devices under FSDP
where the trainer shards them (harness.train.scale): the generator's frozen base and DMD's real and
fake scores; the text encoder, the VAE and the adapter are whole on every GPU
plus the activations of the step's largest phase: per transformer block and token, a * dim + b * ffn
bytes (fitted on diffusers' Wan block at several sizes on CPU: sweeps/calibration/activations.yaml),
scaled by the compute dtype; with gradient checkpointing a block keeps only its input, and one block
is recomputed at a time.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from harness.assets import CONFIG_DIR
from harness.engine.cost import RolloutCost, rollout_cost
from harness.errors import UsageError

GB = 1e9
CALIBRATION = CONFIG_DIR / "calibration"
OWN_OPTIONS = {"gpus": "GPUs the work is spread over (default 1)",
               "prompts": "the suite's prompt count where it cannot be read here (suite=vbench without "
                          "vbench.full_info: prompts=946)",
               "gpu_memory_gb": "memory of one GPU (default: the calibration table's)"}
PAPER_RANK = 128  # LoRA rank assumed where method.params.rank is null (the paper's; the toy's default is smaller)
TRAIN_DEFAULTS = ("micro_batch", "devices", "precision", "checkpointing", "sharding")  # train_settings: defaults


# ---------------------------------------------------------------------------------------------
# calibration


def calibration(model: str) -> dict[str, Any]:
    """The model's calibration table; a model without one is refused with how to make it."""
    path = CALIBRATION / f"{model}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CALIBRATION.glob("*.yaml") if p.stem != "activations")
        raise UsageError(f"model {model!r} has no calibration table {path}; `refinery plan` knows {', '.join(known)}; "
                         "measure one with benchmarks/calibrate_plan.py and add it there")
    return yaml.safe_load(path.read_text())


def activation_model() -> dict[str, Any]:
    return yaml.safe_load((CALIBRATION / "activations.yaml").read_text())


# ---------------------------------------------------------------------------------------------
# sampling sweeps


@dataclass
class CellCost:
    labels: dict[str, str]
    model: str
    method: str
    videos: int
    per_video: RolloutCost
    gpu_hours: float
    storage_bytes: int
    peak_gb: float
    batch_rows: int
    merged_gb: float = 0.0  # a trained method's merged copy of the adapted weights (method.params.merge)

    def totals(self) -> dict[str, int]:
        c = self.per_video
        return {"nfe": c.nfe * self.videos, "cache_passes": c.cache_passes * self.videos,
                "verifier_calls": c.verifier_calls * self.videos, "decodes": c.decodes * self.videos}


@dataclass
class SweepPlan:
    cells: list[CellCost]
    gpus: int
    gpu_memory_gb: float
    sources: dict[str, str] = field(default_factory=dict)  # model -> "measured ..." / "published ..."

    @property
    def gpu_hours(self) -> float:
        return sum(c.gpu_hours for c in self.cells)

    @property
    def wall_hours_even(self) -> float:
        """Every cell's videos spread over all GPUs (shards of a cell)."""
        return self.gpu_hours / self.gpus

    @property
    def wall_hours_per_cell(self) -> float:
        """One GPU per cell (longest cell first onto the least loaded GPU)."""
        loads = [0.0] * self.gpus
        for hours in sorted((c.gpu_hours for c in self.cells), reverse=True):
            loads[loads.index(min(loads))] += hours
        return max(loads)

    @property
    def storage_bytes(self) -> int:
        return sum(c.storage_bytes for c in self.cells)


def split_options(overrides: list[str]) -> tuple[dict[str, str], list[str]]:
    """`refinery plan`'s own options (OWN_OPTIONS) and the Hydra overrides."""
    own, rest = {}, []
    for o in overrides:
        key, _, value = o.partition("=")
        if key in OWN_OPTIONS:
            if not value:
                raise UsageError(f"{key}= needs a value: {OWN_OPTIONS[key]}")
            own[key] = value
        else:
            rest.append(o)
    return own, rest


def _number(options: dict[str, str], key: str, default: float | None, kind: type = int) -> Any:
    if key not in options:
        return default
    try:
        value = kind(options[key])
    except ValueError:
        value = 0
    if value <= 0:
        raise UsageError(f"{key}={options[key]} is not a positive {kind.__name__}; {OWN_OPTIONS[key]}")
    return value


def _params(cfg: DictConfig, model: str) -> dict[str, Any]:
    """The method's parameters, a trained method's null architecture switches taken from its
    checkpoint's metadata where the file is here (a shipped tag or a path)."""
    given = cfg.method.get("params")
    params = OmegaConf.to_container(given, resolve=True) if given else {}
    if params.get("checkpoint") and None in params.values():
        from harness.train.adapter_files import checkpoint_path, read_metadata

        path = checkpoint_path(cfg.method.name, str(params["checkpoint"]), model)
        if path.is_file():
            arch = json.loads(read_metadata(path).get("arch", "{}"))
            params = {k: arch.get(k) if v is None else v for k, v in params.items()}
    return params


def _steps(cfg: DictConfig) -> int:
    s, defaults = cfg.sampler, cfg.model.get("sampling") or {}
    if s.steps is not None:
        return int(s.steps)
    timesteps = s.get("timesteps") if s.get("timesteps") is not None else defaults.get("timesteps")
    return len(timesteps) if timesteps is not None else int(defaults.get("steps", 4))


def _prompt_count(cfg: DictConfig, given: int | None) -> int:
    if given is not None:
        return given
    from harness.experiment.suites import read_suite

    try:
        return len(read_suite(cfg.suite).prompts)
    except UsageError as exc:
        raise UsageError(f"{exc}; or give `refinery plan` the count, e.g. prompts=946 (VBench's standard suite)") from None


def cell_cost(cfg: DictConfig, labels: dict[str, str], gpus: int, prompts: int | None) -> CellCost:
    from harness.engine.registry import METHODS

    model = str(cfg.model.name)
    table = calibration(model)
    per_video = rollout_cost(METHODS.declared(cfg.method.name, "cost"), _params(cfg, model), _steps(cfg),
                             int(cfg.model.num_chunks))
    videos = _prompt_count(cfg, prompts) * int(cfg.samples_per_prompt)
    seconds = (per_video.model_passes * table["seconds_per_model_pass"] + per_video.decodes * table["seconds_per_decode"]
               + per_video.verifier_calls * table["seconds_per_verifier_call"])
    rows = min(int(cfg.batch_size), -(-videos // gpus)) * per_video.rows
    memory = table["memory_gb"]
    merged = memory["merged_copy"] if OmegaConf.select(cfg, "method.params.merge", default=False) else 0.0
    return CellCost(labels, model, str(cfg.method.name), videos, per_video, videos * seconds / 3600,
                    videos * int(table["stored_bytes_per_video"]), memory["resident"] + merged + rows * memory["per_row"],
                    rows, merged)


def plan_sweep(overrides: list[str]) -> SweepPlan:
    """The cost of every cell `overrides` expand to (module docstring); refuses what cannot fit."""
    from harness.experiment.plans import compose, expand, label_points

    own, rest = split_options(overrides)
    gpus = _number(own, "gpus", 1)
    points = expand(rest)
    cfgs = [compose(point) for point in points]
    cells = [cell_cost(cfg, labels, gpus, _number(own, "prompts", None))
             for cfg, labels in zip(cfgs, label_points(points, cfgs))]
    tables = {c.model: calibration(c.model) for c in cells}
    memory = _number(own, "gpu_memory_gb", min(t["gpu_memory_gb"] for t in tables.values()), float)
    plan = SweepPlan(cells, gpus, memory, {m: f"{t['source']} ({t['device']})" for m, t in tables.items()})
    too_big = [c for c in plan.cells if c.peak_gb > memory]
    if too_big:
        worst = max(too_big, key=lambda c: c.peak_gb)
        per_row = tables[worst.model]["memory_gb"]["per_row"] * worst.per_video.rows
        fits = int((memory - tables[worst.model]["memory_gb"]["resident"] - worst.merged_gb) // per_row)
        fix = (f"lower batch_size to {fits}" if fits >= 1 else
               "lower the method's candidates (method.params.n) or use GPUs with more memory")
        if worst.merged_gb:
            fix += f", or sample with method.params.merge=false (no merged copy: {worst.merged_gb:g} GB less)"
        raise UsageError(f"cell {_name(worst)}: one rollout batch of {worst.batch_rows} rows needs about "
                         f"{worst.peak_gb:.1f} GB per GPU, more than {memory:g} GB ({len(too_big)} of {len(cells)} "
                         f"cells do not fit); {fix}")
    return plan


def _name(cell: CellCost) -> str:
    return " ".join(f"{k}={v}" for k, v in cell.labels.items()) or cell.method


def _hours(h: float) -> str:
    return f"{h * 60:.1f} min" if h < 1 else f"{h:.1f} h"


def _bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n / 1e3:.3g} kB"


def format_sweep(plan: SweepPlan) -> str:
    header = ("cell", "videos", "NFE", "cache", "verify", "decodes", "GPU-h", "storage", "peak GB/GPU")
    rows = [header]
    for c in plan.cells:
        t = c.totals()
        bound = "<=" if c.per_video.upper_bound else ""
        rows.append((_name(c), str(c.videos), f"{bound}{t['nfe']:,}", f"{t['cache_passes']:,}", f"{t['verifier_calls']:,}",
                     f"{t['decodes']:,}", f"{c.gpu_hours:.2f}", _bytes(c.storage_bytes), f"{c.peak_gb:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))) for r in rows]
    lines += ["", f"total: {plan.gpu_hours:.1f} GPU-hours; on {plan.gpus} GPU(s): {_hours(plan.wall_hours_even)} "
                  f"with every cell's videos spread over the GPUs, {_hours(plan.wall_hours_per_cell)} with one GPU "
                  f"per cell; storage {_bytes(plan.storage_bytes)}; peak memory per GPU "
                  f"{max(c.peak_gb for c in plan.cells):.1f} of {plan.gpu_memory_gb:g} GB",
              "counts per video from each method's declared cost (the ledger's units; <= : an upper bound); "
              "times and memory from sweeps/calibration/: " + "; ".join(f"{m}: {s}" for m, s in plan.sources.items())]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# training


@dataclass
class TrainMemory:
    """Peak memory per GPU of a training step, by part (GB)."""

    parts: dict[str, float]
    phase: str  # the phase whose activations make the peak
    settings: dict[str, Any]
    gpu_memory_gb: float
    source: str

    @property
    def peak_gb(self) -> float:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        return self.peak_gb <= self.gpu_memory_gb


def train_settings(train: DictConfig | dict) -> dict[str, Any]:
    """train.micro_batch, devices, precision, checkpointing and sharding, with their defaults where the
    config does not set them: devices 1; micro_batch the videos one rank gets of train.batch (the
    effective batch, split over the ranks); precision the model's dtype (None here); and with more
    than one device the paper's recipe (Appendix A), sharding fsdp with gradient checkpointing, else
    sharding none without checkpointing."""
    given = {k: train.get(k) for k in TRAIN_DEFAULTS}
    devices = int(given["devices"] or 1)
    if devices < 1:
        raise UsageError(f"train.devices={devices} is out of range; use an integer >= 1")
    many = devices > 1
    settings = {"devices": devices, "precision": given["precision"],
                "micro_batch": int(given["micro_batch"] or -(-int(train.get("batch") or 1) // devices)),
                "sharding": given["sharding"] or ("fsdp" if many else "none"),
                "checkpointing": bool(many if given["checkpointing"] is None else given["checkpointing"])}
    if settings["sharding"] not in ("none", "fsdp"):
        raise UsageError(f"train.sharding={settings['sharding']!r} is not one of none, fsdp; use one of those")
    return settings


def _lora_parameters(net: dict[str, Any], rank: int) -> float:
    """LoRA on every linear of a Wan block: self- and cross-attention q, k, v, o (dim x dim) and the FFN."""
    dim, ffn = net["dim"], net["ffn"]
    return net["blocks"] * rank * (8 * 2 * dim + 2 * (dim + ffn))


def _block_activations(net: dict[str, Any], tokens: float, element_bytes: int, checkpointing: bool,
                       coef: dict[str, float]) -> float:
    """Bytes a forward with gradient keeps for backward over `tokens` tokens (module docstring)."""
    per_token_block = (coef["per_dim"] * net["dim"] + coef["per_ffn"] * net["ffn"]) * element_bytes / 4
    if not checkpointing:
        return net["blocks"] * tokens * per_token_block
    return net["blocks"] * tokens * net["dim"] * element_bytes + tokens * per_token_block


def train_memory(cfg: DictConfig, gpu_memory_gb: float | None = None) -> TrainMemory:
    """Peak memory per GPU of `refinery train` with this config (module docstring)."""
    model = str(cfg.model.name)
    table = calibration(model)
    arch = table.get("training")
    if arch is None:
        raise UsageError(f"model {model!r}'s calibration table has no training section; the training plan knows "
                         "self_forcing, causvid and wan_tiny")
    s = train_settings(cfg.train)
    # train.precision: model computes in the model's dtype, mixed in bf16 (with fp32 masters of the adapter)
    precision = "bfloat16" if s["precision"] == "mixed" else str(cfg.model.get("dtype", "float32"))
    compute = 2 if precision in ("bfloat16", "float16") else 4
    shard = s["devices"] if s["sharding"] == "fsdp" else 1
    method, objective = str(cfg.method.name), str(cfg.train.objective.name)
    rank = int((cfg.method.get("params") or {}).get("rank") or PAPER_RANK)
    coef = activation_model()["bytes_per_token_per_block"]
    gen, m = arch["generator"], s["micro_batch"]
    chunk_tokens = arch["frames_per_chunk"] * arch["tokens_per_latent_frame"]
    video_tokens = arch["latent_frames"] * arch["tokens_per_latent_frame"]
    chunks = arch["latent_frames"] // arch["frames_per_chunk"]
    trainable = _lora_parameters(gen, rank)
    parts = {"frozen generator": gen["parameters"] * compute / shard,
             "text encoder": arch["text_encoder_parameters"] * compute,  # not sharded: it runs without gradient
             "adapter (fp32 weights, grads, AdamW)": trainable * 16}  # replicated: it is small
    # with gradient: per chunk the refiner's (or LoRA generator's) forward and the denoise that follows
    forwards = 2 if method in ("autorefiner", "init_noise_refiner") else 1
    rollout = chunks * forwards * _block_activations(gen, chunk_tokens, compute, s["checkpointing"], coef)
    kv_cache = 2 * gen["blocks"] * video_tokens * gen["dim"] * compute  # K/V of the history, no gradient
    phases = {"generator step": m * (rollout + kv_cache)}
    given = cfg.train.objective.get("params")
    params = OmegaConf.to_container(given, resolve=True) if given else {}
    if objective == "dmd":
        real, fake = arch["real_score"], arch["fake_score"]
        parts["real score (frozen)"] = real["parameters"] * compute / shard
        parts["fake score (fp32 weights, grads, AdamW)"] = fake["parameters"] * 16 / shard
        phases["fake-score step"] = m * _block_activations(fake, video_tokens, compute, s["checkpointing"], coef)
        # the critic's fresh rollouts, made together without gradient: a K/V cache per video
        s["fresh_batch"] = int(params.get("fresh_batch") or params["fake_updates"])
        phases["fresh rollouts"] = m * s["fresh_batch"] * kv_cache
    else:
        parts["VAE"] = arch["vae_parameters"] * compute
        sampled = int(params.get("image_frames") or 0) + int(params.get("clip_frames") or 0)
        frames = sampled or (arch["latent_frames"] - 1) * 4 + 1  # the reward's frames, else all of them
        decoded = 1 if s["checkpointing"] else frames
        phases["generator step"] += m * decoded * arch["decode_gb_per_frame"] * GB
    phase = max(phases, key=phases.get)
    parts[f"activations ({phase}, micro-batch {m})"] = phases[phase]
    memory = gpu_memory_gb or float(table["gpu_memory_gb"])
    return TrainMemory({k: v / GB for k, v in parts.items()}, phase, {**s, "precision": precision}, memory,
                       f"{table['source']} ({table['device']}); activations fitted on CPU: "
                       f"{activation_model()['how']}")


def format_train(plan: TrainMemory) -> str:
    s = plan.settings
    lines = [f"training memory per GPU: {plan.peak_gb:.1f} GB of {plan.gpu_memory_gb:g} GB "
             f"({'fits' if plan.fits else 'DOES NOT FIT'}; margin {plan.gpu_memory_gb - plan.peak_gb:+.1f} GB) with "
             f"micro_batch={s['micro_batch']} devices={s['devices']} precision={s['precision']} "
             f"checkpointing={str(s['checkpointing']).lower()} sharding={s['sharding']}"
             + (f" fresh_batch={s['fresh_batch']}" if "fresh_batch" in s else "")]
    lines += [f"  {name:48s} {gb:8.1f} GB" for name, gb in plan.parts.items()]
    lines.append(f"  from: {plan.source}")
    return "\n".join(lines)


def refuse_unfit(plan: TrainMemory) -> None:
    """The check `refinery train` runs before training: one line with the estimate and what to change."""
    if plan.fits:
        return
    s = plan.settings
    advice = [] if s["sharding"] == "fsdp" else ["train.sharding=fsdp"]
    advice += [] if s["checkpointing"] else ["train.checkpointing=true"]
    advice += ["more train.devices"] if s["sharding"] == "fsdp" or advice else []
    advice += ["a smaller train.micro_batch"] if s["micro_batch"] > 1 else []
    advice += ["fewer fresh rollouts together (train.objective.params.fresh_batch=1)"] \
        if plan.phase == "fresh rollouts" and s["fresh_batch"] > 1 else []
    raise UsageError(f"training needs about {plan.peak_gb:.1f} GB per GPU (largest part: "
                     f"{max(plan.parts, key=plan.parts.get)} {max(plan.parts.values()):.1f} GB), more than the "
                     f"{plan.gpu_memory_gb:g} GB of one GPU; use {', '.join(advice) or 'GPUs with more memory'}")


def check_train_memory(cfg: DictConfig) -> None:
    """What `refinery train` runs before training: refuse a config that cannot fit one GPU (a model
    without a training calibration table, such as the toy, is not checked)."""
    path = CALIBRATION / f"{cfg.model.name}.yaml"
    if path.is_file() and "training" in calibration(str(cfg.model.name)):
        refuse_unfit(train_memory(cfg))


def plan_train(overrides: list[str]) -> TrainMemory:
    from harness.experiment.plans import compose

    own, rest = split_options(overrides)
    name = next((o.partition("=")[2] for o in reversed(rest) if o.partition("=")[0].lstrip("+") == "train"), "reward")
    rest = [o for o in rest if o.partition("=")[0].lstrip("+") != "train"]
    cfg = compose([f"+train={name}", *[f"++{o}" if o.startswith("train.") else o for o in rest]])
    plan = train_memory(cfg, _number(own, "gpu_memory_gb", None, float))
    return plan


def is_training(overrides: list[str]) -> bool:
    return any(o.partition("=")[0].lstrip("+").partition(".")[0] == "train" for o in overrides)
