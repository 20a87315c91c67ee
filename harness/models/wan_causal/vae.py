"""Wan's VAE (diffusers' `AutoencoderKLWan`) decoding a video chunk by chunk.

The decoder is causal in time: diffusers' `decode` runs it one latent frame at a time, each causal
convolution carrying the last two frames of its input forward in a feature cache. `decode_latents`
runs exactly that loop from a given cache (`VaeState`), so decoding a video in chunks, in order, gives
the same frames as decoding it whole, and a search method can decode each candidate chunk from the
state of the chunks committed before it. The state is never mutated: a call returns a new one.

The first latent frame decodes to one pixel frame, every later one to four (Wan's 4x temporal
compression: 21 latent frames -> 81 frames).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

Entry = torch.Tensor | str | None  # a causal conv's cached frames, diffusers' "Rep" marker, or nothing yet


@dataclass(frozen=True)
class VaeState:
    """The decoder's feature cache after `frames` latent frames, for `rows` videos."""

    cache: tuple[Entry, ...]
    frames: int
    rows: int

    def select(self, index: torch.Tensor) -> "VaeState":
        return VaeState(tuple(e[index] if isinstance(e, torch.Tensor) else e for e in self.cache), self.frames,
                        len(index))

    def repeat(self, k: int) -> "VaeState":
        if k == 1:
            return self
        return VaeState(tuple(e.repeat_interleave(k, 0) if isinstance(e, torch.Tensor) else e for e in self.cache),
                        self.frames, self.rows * k)


def causal_conv_count(vae: nn.Module) -> int:
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    return sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())


def decode_latents(vae: nn.Module, latents: torch.Tensor, state: VaeState | None) -> tuple[torch.Tensor, VaeState]:
    """Normalised latents (B, F, C, h, w) that follow `state` (None: the video's start; a state of
    B / k rows serves k consecutive rows) -> frames (B, F', 3, H, W) in [0, 1] and the new state."""
    b = latents.shape[0]
    if state is None:
        cache, done = [None] * causal_conv_count(vae), 0
    else:
        if b % state.rows:
            raise ValueError(f"{b} latent rows do not continue a decoder state of {state.rows} rows")
        rows = state.repeat(b // state.rows)
        cache, done = list(rows.cache), rows.frames
    x = _decoder_input(vae, latents)
    outputs = []
    for i in range(x.shape[2]):
        outputs.append(vae.decoder(x[:, :, i: i + 1], feat_cache=cache, feat_idx=[0], first_chunk=done + i == 0))
    return _pixels(torch.cat(outputs, 2)), VaeState(tuple(cache), done + x.shape[2], b)


def _decoder_input(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    cfg = vae.config
    mean = torch.tensor(cfg.latents_mean, dtype=latents.dtype, device=latents.device).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg.latents_std, dtype=latents.dtype, device=latents.device).view(1, -1, 1, 1, 1)
    z = latents.transpose(1, 2) * std + mean  # (B, C, F, h, w), diffusers' de-normalisation
    return vae.post_quant_conv(z.to(vae.post_quant_conv.weight.dtype))


def _pixels(frames: torch.Tensor) -> torch.Tensor:
    """The decoder's output (B, 3, F, H, W) in [-1, 1] -> frames (B, F, 3, H, W) in [0, 1]."""
    return (frames.clamp(-1.0, 1.0).float().transpose(1, 2) * 0.5 + 0.5).clamp(0, 1)


def first_frame_of(latent: int) -> int:
    """The first video frame that latent frame `latent` decodes to (one frame for latent 0, then 4 each)."""
    return 0 if latent == 0 else 1 + 4 * (latent - 1)


def latent_of(frame: int) -> int:
    return 0 if frame == 0 else (frame - 1) // 4 + 1


def decode_frames(vae: nn.Module, latents: torch.Tensor, frames: list[int], span: int) -> torch.Tensor:
    """The video frames `frames` (ascending indices) of normalised latents (B, F, C, h, w) from the
    video's start: the same values as decode_latents(vae, latents, None)[0][:, frames], and the same
    gradient. A frame depends on every latent frame up to its own through the causal cache, so the
    decoder runs up to the last latent frame needed, `span` latent frames at a time, each span under
    non-reentrant torch.utils.checkpoint: the backward pass keeps only the cache between spans and the
    frames asked for, and recomputes a span's activations when it reaches it."""
    from torch.utils.checkpoint import checkpoint

    last = latent_of(frames[-1])
    x = _decoder_input(vae, latents[:, : last + 1])
    cache: tuple[Entry, ...] = (None,) * causal_conv_count(vae)
    kept = []
    for start in range(0, last + 1, span):
        end = min(start + span, last + 1)
        local = [f - first_frame_of(start) for f in frames if start <= latent_of(f) < end]
        out, cache = checkpoint(_decode_span, vae, x[:, :, start:end], cache, start, local, use_reentrant=False)
        kept.append(out)
    return _pixels(torch.cat(kept, 2))


def _decode_span(vae: nn.Module, x: torch.Tensor, cache: tuple[Entry, ...], start: int,
                 local: list[int]) -> tuple[torch.Tensor, tuple[Entry, ...]]:
    """Latent frames start.. of a video through the decoder from `cache` (never mutated: a recompute in
    the backward pass starts from the same state), keeping the output frames `local` of the span."""
    cache = list(cache)
    outputs = [vae.decoder(x[:, :, i: i + 1], feat_cache=cache, feat_idx=[0], first_chunk=start + i == 0)
               for i in range(x.shape[2])]
    return torch.cat(outputs, 2)[:, :, local], tuple(cache)
