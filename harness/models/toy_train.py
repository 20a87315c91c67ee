"""`refinery train-world`: train the toy backend from scratch on the shapes world (CPU, ~25 min).

1. render the training prompts (several seeds each) into a uint8 dataset;
2. train the frame autoencoder, then fix its latent normalisation;
3. train the text encoder and causal denoiser with flow matching under diffusion forcing: every
   chunk draws its own noise level, clean chunks serve as context, prompts drop to the
   unconditional null prompt 10% of the time, and an EMA of the weights is what ships. Two stages:
   first chunks alone, where the prompt is all the model has to go on (what a video shows), then
   short windows of chunks at random offsets, where the context decides how it moves on. The
   windows cover the model's local attention (`ToyConfig.context_chunks`), so each training
   window looks like one step of a rollout, at a third of the cost of a whole clip.

A run can be killed and resumed: the command again, with the same settings, continues from the newest
step folder (`<out stem>.steps/`, harness.train.checkpoints: the networks, AdamW, the EMA and the data
generator's state) to the weights of the uninterrupted run, bit for bit at the same thread count; the
folders go once the run completes. The denoiser's architecture (patch, dim, depth, heads) is an option:
the checkpoint records it, and loading follows it.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from harness.errors import UsageError
from harness.models.toy import FLOW_WEIGHTS, ToyConfig, ToyVideoModel, block_causal_mask, load_toy, tokenize
from harness.engine.samplers import Sampler
from harness.engine.schema import option
from harness.models.weights import save_safetensors
from harness.store.files import canonical_json
from harness.train.checkpoints import differing, load_step, read_run, remove_steps, save_step, section, step_folders
from harness.train.distributed import World
from harness.train.scale import load_network_state, network_state
from harness.world.grammar import parse
from harness.world.prompts import train_prompts
from harness.world.render import render


@dataclass
class TrainWorldConfig:
    out: str = str(FLOW_WEIGHTS)
    seed: int = option(0, min=0)
    videos_per_prompt: int = option(8, min=1)
    vae_steps: int = option(600, min=0)
    vae_batch: int = option(64, min=1)
    vae_lr: float = option(2e-3, above=0)
    first_chunk_steps: int = option(1500, min=0)  # stage 1: first chunks only
    steps: int = option(2500, min=0)  # stage 2: windows of `window_chunks` chunks
    window_chunks: int = option(3, min=1)
    first_window_prob: float = option(0.5, min=0, max=1)  # share of stage-2 windows that start at the first chunk
    batch: int = option(32, min=1)
    lr: float = option(5e-4, above=0)
    warmup: int = option(100, min=0)
    ema: float = option(0.995, min=0, max=1)
    sampler_sigma_prob: float = option(0.5, min=0, max=1)  # share of chunks trained at the default sampler's noise levels
    noisy_first_prob: float = option(0.5, min=0, max=1)  # share of first windows whose first chunk is noisy (no clean prefix)
    prompt_dropout: float = option(0.1, min=0, max=1)
    threads: int = option(0, min=0)  # torch threads; 0 keeps torch's default (all cores)
    vae_from: str = ""  # a toy checkpoint whose autoencoder is reused instead of trained (vae_steps unused)
    init_from: str = ""  # a toy checkpoint to continue from: all its weights, its autoencoder kept
    checkpoint_every: int = option(250, min=1)  # denoiser steps between checkpoints (resume state, EMA weights to `out`)
    # the denoiser's architecture (harness.models.toy.ToyConfig, whose defaults these are; literal, so
    # that --help reads them from the source): tokens of patch x patch latent pixels
    patch: int = option(4, min=1)
    dim: int = option(128, min=1)
    depth: int = option(4, min=1)
    heads: int = option(4, min=1)


def architecture(cfg: TrainWorldConfig) -> ToyConfig:
    return ToyConfig(patch=cfg.patch, dim=cfg.dim, depth=cfg.depth, heads=cfg.heads)


def check_architecture(cfg: TrainWorldConfig) -> None:
    """Refuse, before any compute, a denoiser whose tokens or heads do not divide evenly."""
    size = ToyConfig.latent_size
    if size % cfg.patch:
        raise UsageError(f"train-world: patch={cfg.patch} does not divide the {size}x{size} latent frame; "
                         f"choose a divisor of {size} (1, 2, 4, 8, 16)")
    if cfg.dim % cfg.heads:
        raise UsageError(f"train-world: dim={cfg.dim} is not a multiple of heads={cfg.heads}; choose heads that divide dim")
    if cfg.init_from:
        given, theirs = asdict(architecture(cfg)), asdict(load_toy(cfg.init_from).cfg)
        if given != theirs:
            differ = " ".join(f"{k}={theirs[k]}" for k in given if given[k] != theirs[k])
            raise UsageError(f"train-world: init_from={cfg.init_from} is a model of another architecture; "
                             f"give its {differ} to continue it")


def render_dataset(prompts: list[str], per_prompt: int, frames: int, size: int) -> tuple[np.ndarray, list[str]]:
    videos = np.empty((len(prompts) * per_prompt, frames, size, size, 3), dtype=np.uint8)
    labels = []
    for i, prompt in enumerate(tqdm(prompts, desc="render world", unit="prompt")):
        scene = parse(prompt)
        for k in range(per_prompt):
            videos[i * per_prompt + k] = np.round(render(scene, 10_000 + i * per_prompt + k, frames, size) * 255)
            labels.append(prompt)
    return videos, labels


def _cosine_lr(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


def train_autoencoder(model: ToyVideoModel, frames: torch.Tensor, cfg: TrainWorldConfig, gen: torch.Generator) -> None:
    vae = model.vae
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    bar = tqdm(range(cfg.vae_steps), desc="train autoencoder", unit="step")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _cosine_lr(step, cfg.vae_steps, 50, cfg.vae_lr)
        idx = torch.randint(len(frames), (cfg.vae_batch,), generator=gen)
        x = frames[idx].float().div(255).permute(0, 3, 1, 2)
        z = vae.encoder(x * 2 - 1)
        # noisy latents teach the decoder to tolerate imperfect denoiser outputs
        z_noisy = z + 0.05 * torch.randn(z.shape, generator=gen)
        rec = vae.decoder(z_noisy) * 0.5 + 0.5
        loss = F.mse_loss(rec, x) + 0.1 * F.l1_loss(rec, x) + 1e-3 * z.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    with torch.no_grad():
        sample = frames[torch.randint(len(frames), (4096,), generator=gen)].float().div(255).permute(0, 3, 1, 2)
        z = vae.encoder(sample * 2 - 1)
        vae.latent_mean.copy_(z.mean(dim=(0, 2, 3)))
        vae.latent_std.copy_(z.std(dim=(0, 2, 3)))


def encode_dataset(model: ToyVideoModel, videos: np.ndarray) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for start in tqdm(range(0, len(videos), 256), desc="encode latents", unit="batch"):
            v = torch.from_numpy(videos[start: start + 256]).float().div(255).permute(0, 1, 4, 2, 3)
            out.append(model.encode_video(v))
    return torch.cat(out)


SAMPLER_SIGMAS = torch.tensor(Sampler(steps=4, shift=1.0).sigmas, dtype=torch.float32)  # the default sampler's levels


def chunk_sigmas(batch: int, k: int, frames_per_chunk: int, sampler_prob: float, noisy_first: float,
                 gen: torch.Generator) -> torch.Tensor:
    """Diffusion forcing: an independent noise level per chunk, (B, F).

    Part of the levels are the default sampler's, where a few-step sampler needs the model most, the
    rest uniform in (0, 1]. Some clips start with a clean prefix of random length (the KV cache of
    clean chunks); a `noisy_first` share keep the first chunk noisy: only there does the prompt alone
    decide the video, and a uniform prefix length leaves the text too little of the loss to learn from."""
    uniform = 1 - torch.rand(batch, k, generator=gen)
    levels = SAMPLER_SIGMAS[torch.randint(len(SAMPLER_SIGMAS), (batch, k), generator=gen)]
    pick = torch.rand(batch, k, generator=gen) < sampler_prob
    sig = torch.where(pick, levels, uniform)
    prefix = torch.randint(1, max(k, 2), (batch, 1), generator=gen) * (torch.rand(batch, 1, generator=gen) >= noisy_first)
    return sig.masked_fill(torch.arange(k)[None, :] < prefix, 0.0).repeat_interleave(frames_per_chunk, 1)


def _stage(step: int, chunks: int, cfg: TrainWorldConfig, gen: torch.Generator) -> tuple[int, int, float]:
    """(first chunk, number of chunks, share of noisy first chunks) of this step's training windows."""
    if step < cfg.first_chunk_steps:
        return 0, 1, 1.0
    window = min(cfg.window_chunks, chunks)
    if chunks == window or torch.rand(1, generator=gen).item() < cfg.first_window_prob:
        return 0, window, cfg.noisy_first_prob
    # a later window: its first chunk is always clean, the context its successors continue from
    return int(torch.randint(1, chunks - window + 1, (1,), generator=gen)), window, 0.0


class DenoiserTraining:
    """The text encoder and denoiser under training, their AdamW, their EMA (what ships) and the data
    generator: everything a resume restores, as flat tensors (`state`, `load`)."""

    def __init__(self, model: ToyVideoModel, gen: torch.Generator, cfg: TrainWorldConfig):
        self.model, self.gen, self.cfg = model, gen, cfg
        self.params = list(model.text.parameters()) + list(model.denoiser.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=0.01)
        self.ema = copy.deepcopy(model).eval()
        self.null = tokenize([""])  # the unconditional prompt that prompt dropout swaps in

    def state(self) -> dict[str, torch.Tensor]:
        return {**network_state(self.model, self.opt), **{f"ema/{k}": v for k, v in self.ema.state_dict().items()},
                "generator": self.gen.get_state()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        load_network_state(self.model, self.opt, state)
        self.ema.load_state_dict(section(state, "ema/"))
        self.gen.set_state(state["generator"])


def denoiser_step(t: DenoiserTraining, latents: torch.Tensor, text: tuple[torch.Tensor, torch.Tensor],
                  step: int) -> float:
    """One flow-matching step under diffusion forcing (module docstring), then the EMA; its loss."""
    model, cfg, gen = t.model, t.cfg, t.gen
    (ids_all, mask_all), (null_ids, null_mask) = text, t.null
    fpc = model.cfg.frames_per_chunk
    for g in t.opt.param_groups:
        g["lr"] = _cosine_lr(step, cfg.first_chunk_steps + cfg.steps, cfg.warmup, cfg.lr)
    first, k, noisy_first = _stage(step, latents.shape[1] // fpc, cfg, gen)
    idx = torch.randint(len(latents), (cfg.batch,), generator=gen)
    x0 = latents[idx, first * fpc: (first + k) * fpc]
    ids, tmask = ids_all[idx].clone(), mask_all[idx].clone()
    drop = torch.rand(cfg.batch, generator=gen) < cfg.prompt_dropout
    ids[drop], tmask[drop] = null_ids, null_mask
    sig = chunk_sigmas(cfg.batch, k, fpc, cfg.sampler_sigma_prob, noisy_first, gen)
    noise = torch.randn(x0.shape, generator=gen)
    s = sig[:, :, None, None, None]
    xt = (1 - s) * x0 + s * noise
    # float32 throughout: in bfloat16 the small differences between pooled prompts vanish
    v, _ = model.denoiser(xt, sig, model.text(ids, tmask), tmask, first * fpc, None,
                          block_causal_mask(k * fpc, model.cfg))
    noisy = (sig > 0)[:, :, None, None, None].float()  # clean context chunks carry no loss
    loss = ((v.float() - (noise - x0)) ** 2 * noisy).sum() / (noisy.sum() * x0[0, 0].numel())
    t.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(t.params, 1.0)
    t.opt.step()
    with torch.no_grad():
        decay = min(cfg.ema, (1 + step) / (10 + step))
        for pe, pm in zip(t.ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1 - decay)
    return loss.item()


def train_denoiser(t: DenoiserTraining, latents: torch.Tensor, labels: list[str], start: int = 0,
                   on_checkpoint: Callable[[int], None] | None = None) -> ToyVideoModel:
    """Steps `start` .. the last of both stages; returns the EMA model."""
    cfg = t.cfg
    text = tokenize(labels)
    total = cfg.first_chunk_steps + cfg.steps
    bar = tqdm(range(start, total), initial=start, total=total, desc="train denoiser", unit="step")
    for step in bar:
        loss = denoiser_step(t, latents, text, step)
        if step % 20 == 0:
            bar.set_postfix(stage=1 if step < cfg.first_chunk_steps else 2, loss=f"{loss:.4f}")
        if on_checkpoint and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total:
            on_checkpoint(step + 1)
    return t.ema


def save_toy(model: ToyVideoModel, path: str | Path, meta: dict) -> None:
    """Weights, architecture, name, teacher (a distilled model's) and how it was trained."""
    save_safetensors(model.state_dict(), path, {"toy_config": json.dumps(asdict(model.cfg)), "name": model.name,
                                                "teacher": model.teacher or "", "training": json.dumps(meta)})


RUNTIME_KEYS = ("out", "threads", "checkpoint_every")  # they change where, how fast, how often: not the weights


def identity(cfg: TrainWorldConfig) -> dict:
    """What decides the weights: a resume must match it."""
    return {k: v for k, v in asdict(cfg).items() if k not in RUNTIME_KEYS}


def resumable(cfg: TrainWorldConfig) -> tuple[Path | None, int]:
    """The newest step folder of this run (`<out stem>.steps/step-N`) and its step, or (None, 0) to
    start from scratch; one of a run with other settings is refused."""
    folders = step_folders(Path(cfg.out))
    if not folders:
        return None, 0
    run, ours = read_run(folders[-1]), json.loads(canonical_json(identity(cfg)))
    if run["identity"] != ours:
        raise UsageError(f"{folders[-1]} belongs to a train-world run with other settings "
                         f"({', '.join(differing(run['identity'], ours))}); give that run's settings to finish it, "
                         f"or delete {folders[-1].parent} to start over")
    return folders[-1], int(run["step"])


def train_world(cfg: TrainWorldConfig) -> Path:
    """Train the toy model from scratch, or resume the newest step folder of the same settings: the
    autoencoder's end is step 0, then every `checkpoint_every` denoiser steps; the weights are those
    of the uninterrupted run, bit for bit (same threads). The EMA weights go to `out` at every
    checkpoint too, so a run can be judged while it trains."""
    check_architecture(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out, world = Path(cfg.out), World()
    folder, step = resumable(cfg)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.time()
    model = ToyVideoModel(architecture(cfg))
    frames_per_video = model.cfg.frames_per_chunk * model.cfg.num_chunks
    videos, labels = render_dataset(train_prompts(), cfg.videos_per_prompt, frames_per_video, model.cfg.frame_size)
    if folder is None:
        _start_weights(model, videos, cfg, gen)
    t = DenoiserTraining(model, gen, cfg)  # its EMA starts from the weights the denoiser's first step sees
    if folder is None:
        save_step(out, step, t.state(), identity(cfg), world)
    else:
        t.load(load_step(folder, {}))
    latents = encode_dataset(model, videos)
    # wall_seconds: this process's, from the step it resumed at (resumed_from; 0 from scratch)
    run = {**asdict(cfg), "resumed_from": step}

    def checkpoint(at: int) -> None:
        save_step(out, at, t.state(), identity(cfg), world)
        save_toy(t.ema, out, {**run, "step": at, "wall_seconds": round(time.time() - start, 1)})

    ema = train_denoiser(t, latents, labels, step, checkpoint)
    meta = {**run, "step": cfg.first_chunk_steps + cfg.steps, "wall_seconds": round(time.time() - start, 1),
            "torch": torch.__version__}
    save_toy(ema, out, meta)
    remove_steps(out)
    return out


def _start_weights(model: ToyVideoModel, videos: np.ndarray, cfg: TrainWorldConfig, gen: torch.Generator) -> None:
    """The model before the denoiser's first step: a checkpoint's (init_from), or a trained or reused
    autoencoder (vae_from) beside freshly initialised networks."""
    if cfg.init_from:
        model.load_state_dict(load_toy(cfg.init_from).state_dict())
    elif cfg.vae_from:
        model.vae.load_state_dict(load_toy(cfg.vae_from).vae.state_dict())
    else:
        frames = torch.from_numpy(videos.reshape(-1, *videos.shape[2:]))
        train_autoencoder(model, frames, cfg, gen)
