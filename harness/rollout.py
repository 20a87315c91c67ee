"""THE autoregressive sampling loop. Methods plug in at its hooks (harness.method.Method):

    for chunk in chunks:
        x = method.initial_noise(ctx)                      # noise refiners; candidates (B*N rows)
        for step in steps:
            x0 = method.denoise(x, ctx)                    # guidance, predict-and-perturb
            keep = method.select(x0, ctx)                  # candidate selection (BoN, SoP)
            if last step: break
            eps = method.path_noise(x, x0, ctx)            # pathwise refiners, path candidates
            x = renoise(x0, eps, next sigma)
        method.commit(x0, ctx)                             # the clean re-run that fills the cache
    decode the chunks no hook has decoded already

Samplers differ only in the path noise: the stochastic sampler of Self-Forcing draws fresh noise,
the Euler ODE sampler reuses the noise implied by x and x0 (then renoise is exactly an Euler step).
Rows: a hook may return k candidate rows per video (k * B); `select` returns which rows survive.

Before the loop, `method.bind(model)` names the model that samples (a trained method's adapted
weights), so the KV cache and the ledger see the weights that actually run.

Training reuses this loop (AutoRefiner's Algorithm 1, Self-Forcing's random exit): with `exit_step`
every chunk stops at that step, whose x0 is the chunk's output and fills the cache, and the loop runs
with autograd on instead of in inference mode. Nothing is recorded unless it depends on a tensor that
requires grad, so only what a method computes from its trainable parameters (at the steps it chooses,
see harness.train) is differentiable; the model wrapper then calls the backend's denoise and decode
beneath their no_grad decorators (harness.ledger), while commits stay gradient-free: no gradient
flows through the history.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from harness.errors import UsageError
from harness.ledger import CountingModel, Ledger
from harness.models.base import Cond, KVCache, VideoModel, shift_sigmas
from harness.noise import NoiseSource

if TYPE_CHECKING:
    from harness.method import Method
    from harness.verifiers.base import Verifier

SAMPLERS = ("stochastic", "ode")


@dataclass(frozen=True)
class Sampler:
    kind: str = "stochastic"
    steps: int = 4
    shift: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in SAMPLERS:
            raise UsageError(f"unknown sampler.kind {self.kind!r}; use one of {', '.join(SAMPLERS)}")
        if self.steps < 1:
            raise UsageError(f"sampler.steps={self.steps} is out of range; use 1 or more steps")
        if self.shift <= 0:
            raise UsageError(f"sampler.shift={self.shift} is out of range; use a positive shift")

    @property
    def sigmas(self) -> list[float]:
        """Noise levels of the steps: timesteps 1000, ..., 1000/steps, warped by the shift."""
        base = torch.linspace(1.0, 0.0, self.steps + 1, dtype=torch.float64)[:-1]
        return shift_sigmas(base, self.shift).tolist()


def renoise(x0: torch.Tensor, eps: torch.Tensor, sigma: float) -> torch.Tensor:
    """The forward process of rectified flow: (1 - sigma) x0 + sigma eps."""
    return (1 - sigma) * x0 + sigma * eps


@dataclass
class Context:
    """What a hook may read: the model (counted), prompts, cache, noise, sampler, ledger, position."""

    model: CountingModel
    cond: Cond
    cache: KVCache
    noise: NoiseSource
    sampler: Sampler
    ledger: Ledger
    chunk: int = 0
    step: int = 0
    history: list[torch.Tensor] = field(default_factory=list)  # committed clean chunks
    decoded: dict[int, torch.Tensor] = field(default_factory=dict)  # chunk -> frames a hook decoded
    exit_step: int | None = None  # training: every chunk stops at this step (see the module docstring)

    @property
    def sigma(self) -> float:
        return self.sampler.sigmas[self.step]

    @property
    def training(self) -> bool:
        return self.exit_step is not None

    @property
    def is_last_step(self) -> bool:
        return self.step == (self.sampler.steps - 1 if self.exit_step is None else self.exit_step)

    def verify(self, verifier: "Verifier", frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Score frames (N, F, 3, H, W) with a verifier; counted in the ledger, one call per row."""
        self.ledger.verifier_calls += frames.shape[0]
        with self.ledger.clock("verifier_seconds"):
            return verifier.score(frames, prompts)


@dataclass
class RolloutResult:
    videos: torch.Tensor  # (B, F, 3, H, W) in [0, 1]
    latents: torch.Tensor  # (B, F, C, h, w)
    ledger: Ledger


def sampler_path_noise(x: torch.Tensor, x0: torch.Tensor, ctx: Context) -> torch.Tensor:
    """The sampler's own path noise: fresh keyed noise, or the ODE's implied noise."""
    if ctx.sampler.kind == "stochastic":
        return ctx.noise.path(ctx.chunk, ctx.step, candidates=x0.shape[0] // len(ctx.noise.seeds))
    return (x - (1 - ctx.sigma) * x0) / ctx.sigma


def rollout(model: VideoModel, method: "Method", prompts: list[str], seeds: list[int], sampler: Sampler,
            ledger: Ledger | None = None, exit_step: int | None = None) -> RolloutResult:
    """Generate one video per (prompt, seed) pair, chunk by chunk. `exit_step`: a training rollout
    (module docstring), whose videos are differentiable where a method made them so."""
    if exit_step is not None and not 0 <= exit_step < sampler.steps:
        raise ValueError(f"exit_step {exit_step} is not one of the sampler's steps 0..{sampler.steps - 1}")
    ledger = ledger or Ledger()
    counted = CountingModel(method.bind(model, training=exit_step is not None), ledger)
    spec = model.spec
    with ledger.timed(), torch.enable_grad() if exit_step is not None else torch.inference_mode():
        cond = counted.encode(prompts)
        ctx = Context(counted, cond, counted.new_cache(len(prompts)),
                      NoiseSource(seeds, (spec.frames_per_chunk, *spec.latent_shape)), sampler, ledger,
                      exit_step=exit_step)
        method.begin(ctx)
        for chunk in range(spec.num_chunks):
            ctx.chunk, ctx.step = chunk, 0
            x = method.initial_noise(ctx)
            for step in range(sampler.steps):
                ctx.step = step
                x0 = method.denoise(x, ctx)
                keep = method.select(x0, ctx)
                if keep is not None:
                    x, x0 = x[keep], x0[keep]
                if ctx.is_last_step:
                    break
                eps = method.path_noise(x, x0, ctx)
                x = renoise(x0.repeat_interleave(eps.shape[0] // x0.shape[0], 0), eps, sampler.sigmas[step + 1])
            ctx.history.append(x0)
            if chunk < spec.num_chunks - 1:  # the last chunk has no successor to attend to it
                method.commit(x0, ctx)
        latents = torch.cat(ctx.history, dim=1)
        videos = decode_remaining(ctx, latents)
        ledger.frames += videos.shape[0] * videos.shape[1]
    return RolloutResult(videos, latents, ledger)


def decode_remaining(ctx: Context, latents: torch.Tensor) -> torch.Tensor:
    """Decode, in one call, the chunks that no hook decoded already (search methods keep the frames
    of the candidates they verified), then assemble the video in chunk order."""
    per_chunk = ctx.model.spec.frames_per_chunk * ctx.model.spec.frames_per_latent
    missing = [c for c in range(len(ctx.history)) if c not in ctx.decoded]
    if len(missing) == len(ctx.history):
        return ctx.model.decode(latents)
    if missing:
        frames = ctx.model.decode(torch.cat([ctx.history[c] for c in missing], 1)).split(per_chunk, 1)
        ctx.decoded.update(zip(missing, frames))
    return torch.cat([ctx.decoded[c] for c in range(len(ctx.history))], 1)
