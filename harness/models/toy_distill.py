"""`refinery distill`: the few-step toy models, distilled from the flow teacher `toy_flow` with DMD.

Two recipes, after the two AR-VDM paradigms of the AutoRefiner paper's Table 1:

- `self_forcing` -> `toy_sf` (Huang et al. 2025, guandeh17/Self-Forcing): the student is a 4-step
  causal generator (timesteps 1000/750/500/250 warped with shift 5: sigma 1, 0.9375, 0.833, 0.625)
  that rolls out autoregressively with its own KV cache, chunk by chunk, on its own generated context,
  through THE rollout loop (harness.engine.rollout, the keyed noise source, a random exit step whose
  denoising call alone carries gradient; the cache holds the exit step's clean outputs, re-run at
  sigma 0 without gradient). Its output videos are scored with the DMD loss (harness.train.objectives:
  real score the teacher with CFG 1.0 (the recipes' comment says why not 3.0), fake score trained online, 5 critic updates per generator
  update, each on a fresh rollout).
- `causvid` -> `toy_causvid` (Yin et al. 2025, tianweiy/CausVid): a 3-step student (1000/757/522, not
  warped, shift 8) distilled with DMD under diffusion forcing on clean, teacher-forced context: every
  chunk draws a noise level of its own among the student's steps, its input is the data chunk (a
  rendered shapes-world video of the prompt) noised to that level with the keyed path noise, and its
  context is the clean data chunks before it, not the student's rollout (CFG 1.0, not 3.5).

Both are the trainer's loop (harness.train.trainer.run_training: progress bar, checkpoints, resume
after a kill to the same weights, a JSONL log) with the student as its method: a full copy of the
teacher's denoiser, every weight trained (Self-Forcing and CausVid fine-tune the whole generator), with
AdamW betas (0, 0.999) for generator and critic as Self-Forcing. The text encoder and the autoencoder
stay the teacher's. The trainer's state lives in `work`; the model file written at `out` is the
teacher with the student's denoiser, named after the recipe's model and naming its teacher (whose
denoiser is then DMD's real score when adapters are trained on the student).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file

from harness.train.adapters import TrainedGenerator, trainable_backend
from harness.experiment.config_schema import TrainSettings
from harness.models.base import VideoModel
from harness.models.toy import SHIPPED, ToyVideoModel, load_toy
from harness.models.toy_train import save_toy
from harness.engine.noise import key_seed
from harness.experiment.resources import check_creatable
from harness.engine.context import Context
from harness.engine.samplers import Sampler
from harness.engine.schema import option
from harness.train.objectives import DmdObjective
from harness.train.trainer import Training, run_training
from harness.world.grammar import parse
from harness.world.prompts import train_prompts
from harness.world.render import render


@dataclass(frozen=True)
class StudentParams:
    checkpoint: str | None = None  # never read: a student starts as a copy of its teacher


class Student(TrainedGenerator):
    """The generator being distilled, Self-Forcing's way: LoRA's limit, the whole trainable module (a
    copy of the teacher's) trained; a training rollout's exit step alone carries gradient."""

    name = "self_forcing_student"
    description = "a full copy of the teacher's denoiser, trained on its own rollouts (refinery distill)"
    Params = StudentParams
    arch_defaults: ClassVar[dict[str, Any]] = {}

    def complete(self, given: dict[str, Any], sampler: Sampler) -> dict[str, Any]:
        return {}

    def merges(self) -> bool:
        return False  # the student is a whole module, not adapters: nothing to merge

    def build(self, model: VideoModel) -> VideoModel:
        backend = trainable_backend(model)
        self.adapted = copy.deepcopy(backend.trainable).requires_grad_(True)
        return backend.with_trainable(self.adapted)


class TeacherForcedStudent(Student):
    """CausVid's way: diffusion forcing on clean, teacher-forced context (module docstring).

    In the rollout loop: before its chunk's level, a step returns the data chunk as its x0, so the
    loop's renoise brings the data to the level with the keyed path noise; at the level, the student
    denoises it (with gradient); after it, the prediction stands. The cache receives the data chunk.
    Levels are one per chunk, shared by the batch, keyed by the rollout's video seeds; the rollout's
    data, levels and prediction live in its context's state."""

    name = "causvid_student"
    description = "a full copy of the teacher's denoiser, trained by diffusion forcing on clean context (refinery distill)"

    def build(self, model: VideoModel) -> VideoModel:
        self.data_model = model
        return super().build(model)

    def exit_steps(self, sampler: Sampler) -> list[int]:
        return [sampler.steps - 1]  # every step runs; each chunk stops being denoised at its own level

    def begin(self, ctx: Context) -> None:
        super().begin(ctx)
        ctx.state["clean"] = world_latents(self.data_model, list(ctx.cond.prompts), ctx.noise.seeds)
        gen = torch.Generator().manual_seed(key_seed(*ctx.noise.seeds, "diffusion-forcing levels"))
        ctx.state["levels"] = torch.randint(ctx.sampler.steps, (ctx.model.spec.num_chunks,), generator=gen).tolist()

    def data_chunk(self, ctx: Context) -> torch.Tensor:
        f = ctx.model.spec.frames_per_chunk
        return ctx.state["clean"][:, ctx.chunk * f: (ctx.chunk + 1) * f]

    def denoise(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        level = ctx.state["levels"][ctx.chunk]
        if ctx.step < level:
            return self.data_chunk(ctx)
        if ctx.step == level:
            with torch.set_grad_enabled(ctx.training):
                ctx.state["prediction"] = ctx.model.denoise(x, ctx.sigma, ctx.cond, ctx.cache)
        return ctx.state["prediction"]

    def commit(self, x0: torch.Tensor, ctx: Context) -> None:
        super().commit(self.data_chunk(ctx), ctx)


def world_latents(model: ToyVideoModel, prompts: list[str], seeds: list[int]) -> torch.Tensor:
    """The shapes world's own video of each (prompt, seed), encoded: CausVid's clean data latents. The
    renders are quantised to 8 bits, as the teacher's training set was (harness.models.toy_train)."""
    frames, size = model.spec.num_latent_frames, model.cfg.frame_size
    videos = np.stack([np.round(render(parse(p), seed, frames, size) * 255) for p, seed in zip(prompts, seeds)])
    return model.encode_video(torch.from_numpy(videos).float().div(255).permute(0, 1, 4, 2, 3))


@dataclass(frozen=True)
class Recipe:
    model: str  # the name of the distilled model (sweeps/model/<model>.yaml)
    sampler: Sampler
    real_guidance: float
    student: type[Student]


# The real score's CFG is 1.0 on the toy for both, not Self-Forcing's 3.0 or CausVid's 3.5: under those,
# colour read by the oracle fell within 50-100 generator updates (Self-Forcing's recipe: 0.917 at step 50,
# 0.607 at 100; CausVid's: 0.32 at step 50, from 0.83 before training), at 1.0 it held (docs/shapes-world.md, "The toy
# models").
RECIPES = {
    "self_forcing": Recipe("toy_sf", Sampler("stochastic", 4, 5.0, (1000.0, 750.0, 500.0, 250.0), warp=True), 1.0,
                           Student),
    "causvid": Recipe("toy_causvid", Sampler("stochastic", 3, 8.0, (1000.0, 757.0, 522.0), warp=False), 1.0,
                      TeacherForcedStudent),
}


@dataclass
class DistillConfig:
    recipe: str = option("self_forcing", choices=tuple(RECIPES))  # self_forcing -> toy_sf, causvid -> toy_causvid
    teacher: str = "toy_flow"  # a shipped model's name or a toy checkpoint
    out: str = ""  # the distilled model file; "": the shipped one of the recipe's model
    work: str = "runs/distill"  # the trainer's checkpoint, resume state and log (<model>.student.*)
    num_chunks: int = option(7, min=1)  # chunks of the training rollouts (the teacher's 7; fewer only for tests)
    steps: int = option(100, min=1)  # generator updates
    batch: int = option(4, min=1)  # videos per rollout
    lr: float = option(2e-5, above=0)  # generator AdamW (betas 0, 0.999)
    fake_lr: float = option(1e-4, above=0)  # critic AdamW (betas 0, 0.999)
    fake_updates: int = option(5, min=1)  # critic updates per generator update, each on a fresh rollout
    timestep_shift: float | None = option(None, above=0)  # the shift of DMD's score levels; None: the sampler's
    real_guidance: float | None = option(None, min=0)  # the real score's CFG g, x0_c + g (x0_c - x0_u); None: the recipe's
    grad_clip: float = option(10.0, min=0)  # Self-Forcing's max_grad_norm
    ema: float = option(0.99, min=0, below=1)  # what ships is the generator's EMA (Self-Forcing's generator_ema)
    ema_start: int = option(50, min=0)  # (Self-Forcing: from step 200 of its run)
    seed: int = option(0, min=0)
    checkpoint_every: int = option(25, min=1)
    threads: int = option(0, min=0)  # torch threads; 0 keeps torch's default

    @property
    def out_path(self) -> Path:
        return Path(self.out) if self.out else SHIPPED[RECIPES[self.recipe].model]

    @property
    def student_path(self) -> Path:
        return Path(self.work) / f"{RECIPES[self.recipe].model}.student.safetensors"


def build_training(cfg: DistillConfig) -> Training:
    """The distillation as a resolved training run of harness.train.trainer; bad input fails here."""
    recipe = RECIPES[cfg.recipe]
    for path, what in ((cfg.out_path, "distill out"), (cfg.student_path, "distill work")):
        check_creatable(path, what)  # before any compute
    teacher = load_toy(cfg.teacher).with_chunks(cfg.num_chunks)
    sampler = recipe.sampler
    student = recipe.student()
    guidance = recipe.real_guidance if cfg.real_guidance is None else cfg.real_guidance
    objective = DmdObjective(real_guidance=guidance, fake_lr=cfg.fake_lr, fake_updates=cfg.fake_updates,
                             timestep_shift=cfg.timestep_shift)
    settings = TrainSettings(objective=objective.describe(), reg_weight=0.0, steps=cfg.steps, batch=cfg.batch,
                             lr=cfg.lr, weight_decay=0.0, betas=(0.0, 0.999), grad_clip=cfg.grad_clip, ema=cfg.ema,
                             ema_start=cfg.ema_start, seed=cfg.seed,
                             checkpoint_every=cfg.checkpoint_every, out=str(cfg.student_path), prompts=None,
                             threads=cfg.threads)
    weights_dir = Path("weights")
    student.prepare(teacher.spec, sampler, weights_dir)
    objective.setup(teacher, sampler, weights_dir)
    teacher.requires_grad_(False)
    student.bind(teacher, training=True)
    config = {"model": {"name": teacher.name, "checkpoint": cfg.teacher, "num_chunks": teacher.spec.num_chunks,
                        "digest": teacher.digest()},
              "sampler": asdict(sampler),
              "method": {"name": student.name, "version": student.version, "arch": student.arch},
              "train": {**asdict(settings), "objective": objective.describe()}}
    return Training(teacher, student, sampler, objective, settings, cfg.student_path, config, train_prompts(),
                    student.trainable_parameters())


def distill(cfg: DistillConfig, progress: bool = True) -> Path:
    """Train (or resume, or find complete) the student, then write the distilled model file."""
    t = build_training(cfg)
    run_training(t, progress)
    t.method.load_adapter_state(load_file(str(t.out)), str(t.out))
    recipe = RECIPES[cfg.recipe]
    model = t.model.with_trainable(t.method.adapted)
    model.name = recipe.model
    model.teacher = cfg.teacher if cfg.teacher in SHIPPED else str(Path(cfg.teacher).resolve())
    meta = {**asdict(cfg), "sampler": asdict(recipe.sampler), "teacher_digest": t.model.digest(), "torch": torch.__version__}
    save_toy(model, cfg.out_path, meta)
    return cfg.out_path
