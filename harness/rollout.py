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
    decode, in chunk order, the chunks no hook has decoded already

Samplers differ only in the path noise (harness.samplers, registered by `sampler.kind`): the
stochastic sampler of Self-Forcing draws fresh noise, the Euler ODE sampler reuses the noise implied
by x and x0 (then renoise is exactly an Euler step).
Rows: a hook may return k candidate rows per video (k * B); `select` returns which rows survive.
Decoding follows the video in chunk order (a causal VAE such as Wan's decodes a chunk exactly only
from the state of the chunks before it): a hook that verifies candidates decodes them with
`ctx.decode_candidates` and keeps the winners' frames with `ctx.keep_decoded`, and the loop decodes
the rest at the end.

Before the loop, `method.bind(model)` names the model that samples (a trained method's adapted
weights), so the KV cache and the ledger see the weights that actually run.

Training reuses this loop (AutoRefiner's Algorithm 1, Self-Forcing's random exit): with `exit_step`
every chunk stops at that step, whose x0 is the chunk's output and fills the cache, and the loop runs
with autograd on instead of in inference mode. Nothing is recorded unless it depends on a tensor that
requires grad, so only what a method computes from its trainable parameters (at the steps it chooses,
see harness.train) is differentiable; the model wrapper then calls the backend's denoise and decode
beneath their no_grad decorators (harness.ledger), while commits stay gradient-free: no gradient
flows through the history. An objective that reads only latents (DMD) skips the decoding
(`decode=False`: the result has no videos).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch

from harness.errors import UsageError
from harness.ledger import CountingModel, Ledger
from harness.registry import SAMPLERS
from harness.models.base import Cond, KVCache, NoiseLevel, VideoModel, shift_sigmas
from harness.noise import NoiseSource

if TYPE_CHECKING:
    from harness.method import Method
    from harness.verifiers.base import Verifier

TABLE_STEPS = 1000  # the training schedule both upstream samplers look timesteps up in


@dataclass(frozen=True)
class Sampler:
    """The noise levels of a few-step sampler, as Self-Forcing and CausVid define them.

    `timesteps` is the denoising step list (1000 = pure noise; None: 1000 * (1 - i / steps)). With
    `warp` (Self-Forcing's warp_denoising_step) each one is mapped through the timestep shift:
    sigma = shift(t / 1000), conditioned on 1000 * sigma (4 steps, shift 5: 1000, 937.5, 833.3, 625).
    Without (CausVid), the model is conditioned on the timestep as given and sigma is the entry of
    the shifted 1000-step schedule nearest to it (1000, 757, 522 with shift 8). Both read the values
    from upstream's own table (`flow_match_table`), so they are upstream's to the last bit."""

    kind: str = "stochastic"
    steps: int = 4
    shift: float = 1.0
    timesteps: tuple[float, ...] | None = None
    warp: bool = True

    def __post_init__(self) -> None:
        SAMPLERS.target(self.kind)  # an unknown kind is named with the closest registered ones
        if self.steps < 1:
            raise UsageError(f"sampler.steps={self.steps} is out of range; use 1 or more steps")
        if self.shift <= 0:
            raise UsageError(f"sampler.shift={self.shift} is out of range; use a positive shift")
        if self.timesteps is not None:
            t = list(self.timesteps)
            if len(t) != self.steps or not all(0 < a <= TABLE_STEPS for a in t) or any(a <= b for a, b in zip(t, t[1:])):
                raise UsageError(f"sampler.timesteps={t} is not {self.steps} decreasing timesteps in (0, "
                                 f"{TABLE_STEPS}]; give one per step (sampler.steps), e.g. [1000, 757, 522]")

    @property
    def step_list(self) -> list[float]:
        """The denoising step list the levels come from (1000 = noise): `timesteps`, or evenly spaced
        1000 (1 - i / steps). Steps are named by it (Self-Forcing's 750, 500, 250, whatever the warp)."""
        if self.timesteps is not None:
            return list(self.timesteps)
        return (TABLE_STEPS * torch.linspace(1.0, 0.0, self.steps + 1, dtype=torch.float64)[:-1]).tolist()

    @cached_property  # hooks read it at every step
    def sigmas(self) -> list[NoiseLevel]:
        """The noise level of every step, each with the timestep the model is conditioned on, as
        upstream's float32 FlowMatchScheduler table gives them (a warped timestep that falls between
        its entries, e.g. 3 even steps, takes the shift formula in float64)."""
        sigmas, timesteps = flow_match_table(self.shift)
        levels = []
        for t in self.step_list:
            if not self.warp:
                i = int((timesteps - t).abs().argmin())
                levels.append(NoiseLevel(sigmas[i].item(), t))
            elif float(TABLE_STEPS - t).is_integer():
                i = int(TABLE_STEPS - t)  # Self-Forcing: cat(timesteps, [0])[1000 - t]
                levels.append(NoiseLevel(sigmas[i].item(), timesteps[i].item()))
            else:
                levels.append(NoiseLevel(shift_sigmas(torch.tensor(t / TABLE_STEPS, dtype=torch.float64),
                                                      self.shift).item()))
        return levels


def flow_match_table(shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-Forcing's and CausVid's FlowMatchScheduler(shift, sigma_min=0, extra_one_step=True) after
    set_timesteps(1000): sigmas and timesteps, computed in float32 as upstream does, held as float64."""
    sigmas = torch.linspace(1.0, 0.0, TABLE_STEPS + 1, dtype=torch.float32)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return sigmas.double(), (sigmas * TABLE_STEPS).double()


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
    decoded: "VideoDecoder | None" = None
    exit_step: int | None = None  # training: every chunk stops at this step (see the module docstring)
    state: dict[str, Any] = field(default_factory=dict)  # what the method keeps between hooks of this
    # rollout (an unconditional cache, a refiner's cache, penalties): per rollout, so that one method
    # instance can serve several rollouts, also at once

    @property
    def sigma(self) -> float:
        return self.sampler.sigmas[self.step]

    @property
    def training(self) -> bool:
        return self.exit_step is not None

    @property
    def is_last_step(self) -> bool:
        return self.step == (self.sampler.steps - 1 if self.exit_step is None else self.exit_step)

    def decode_candidates(self, x0: torch.Tensor) -> torch.Tensor:
        """The frames of this chunk's candidate predictions x0 (k rows per video), decoded after the
        committed chunks; `keep_decoded(rows)` keeps the chosen rows' frames for the video."""
        return self.decoded.candidates(x0, self.history)

    def keep_decoded(self, rows: torch.Tensor) -> None:
        self.decoded.keep(rows)

    def verify(self, verifier: "Verifier", frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Score frames (N, F, 3, H, W) with a verifier; counted in the ledger, one call per row."""
        self.ledger.verifier_calls += frames.shape[0]
        with self.ledger.clock("verifier_seconds"):
            return verifier.score(frames, prompts)


@dataclass
class RolloutResult:
    videos: torch.Tensor | None  # (B, F, 3, H, W) in [0, 1]; None for a rollout with decode=False
    latents: torch.Tensor  # (B, F, C, h, w)
    ledger: Ledger
    state: dict[str, Any] = field(default_factory=dict)  # the method's per-rollout state (Context.state)


def sampler_path_noise(x: torch.Tensor, x0: torch.Tensor, ctx: Context) -> torch.Tensor:
    """The sampler's own path noise (harness.samplers): fresh keyed noise, the ODE's implied noise, ..."""
    return SAMPLERS.get(ctx.sampler.kind).path_noise(x, x0, ctx)


def rollout(model: VideoModel, method: "Method", prompts: list[str], seeds: list[int], sampler: Sampler,
            ledger: Ledger | None = None, exit_step: int | None = None, decode: bool = True) -> RolloutResult:
    """Generate one video per (prompt, seed) pair, chunk by chunk. `exit_step`: a training rollout
    (module docstring), whose videos are differentiable where a method made them so; `decode=False`:
    latents only."""
    if exit_step is not None and not 0 <= exit_step < sampler.steps:
        raise ValueError(f"exit_step {exit_step} is not one of the sampler's steps 0..{sampler.steps - 1}")
    ledger = ledger or Ledger()
    counted = CountingModel(method.bind(model, training=exit_step is not None), ledger)
    spec = model.spec
    with ledger.timed(), torch.enable_grad() if exit_step is not None else torch.inference_mode():
        cond = counted.encode(prompts)
        noise = NoiseSource(seeds, (spec.frames_per_chunk, *spec.latent_shape), device=counted.device)
        ctx = Context(counted, cond, counted.new_cache(len(prompts)), noise, sampler, ledger,
                      decoded=VideoDecoder(counted), exit_step=exit_step)
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
        videos = ctx.decoded.finish(ctx.history) if decode else None
        if videos is not None:
            ledger.frames += videos.shape[0] * videos.shape[1]
    return RolloutResult(videos, latents, ledger, ctx.state)


class VideoDecoder:
    """The frames of a rollout's videos, decoded in chunk order from the decoder's state.

    Chunks a hook decoded (a search method's verified winners) are kept as they are; the others are
    decoded when a later chunk's candidates need the state after them, or at the end in one call.
    Whole-video decoding is used when no hook decoded anything (the common case: one call)."""

    def __init__(self, model: CountingModel):
        self.model = model
        self.segments: list[torch.Tensor] = []  # frames of the decoded chunks, in order
        self.chunks = 0  # how many chunks the segments hold
        self.state = None  # the decoder's state after them
        self.pending: tuple[torch.Tensor, object] | None = None  # the last candidates' frames and state

    def _catch_up(self, history: list[torch.Tensor]) -> None:
        if self.chunks < len(history):
            frames, self.state = self.model.decode_next(torch.cat(history[self.chunks:], 1), self.state)
            self.segments.append(frames)
            self.chunks = len(history)

    def candidates(self, x0: torch.Tensor, history: list[torch.Tensor]) -> torch.Tensor:
        """Frames of the candidates of chunk len(history)."""
        self._catch_up(history)
        self.pending = self.model.decode_next(x0, self.state)
        return self.pending[0]

    def keep(self, rows: torch.Tensor) -> None:
        frames, state = self.pending
        self.segments.append(frames[rows])
        self.state = None if state is None else state.select(rows)
        self.chunks += 1
        self.pending = None

    def finish(self, history: list[torch.Tensor]) -> torch.Tensor:
        if not self.chunks:
            return self.model.decode(torch.cat(history, 1))
        self._catch_up(history)
        return torch.cat(self.segments, 1)
