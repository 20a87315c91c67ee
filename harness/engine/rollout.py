"""THE autoregressive sampling loop. Methods plug in at its hooks (harness.engine.method.Method):

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

Samplers differ only in the path noise (harness.engine.samplers, registered by `sampler.kind`): the
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
beneath their no_grad decorators (harness.engine.ledger), while commits stay gradient-free: no gradient
flows through the history. An objective that reads only latents (DMD) skips the decoding
(`decode=False`: the result has no videos).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from harness.engine.context import Context, RolloutResult, VideoDecoder
from harness.engine.ledger import CountingModel, Ledger
from harness.engine.noise import NoiseSource
from harness.engine.samplers import Sampler, renoise
from harness.models.base import VideoModel

if TYPE_CHECKING:
    from harness.engine.method import Method


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
