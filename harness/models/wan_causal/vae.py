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
    cfg = vae.config
    mean = torch.tensor(cfg.latents_mean, dtype=latents.dtype, device=latents.device).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg.latents_std, dtype=latents.dtype, device=latents.device).view(1, -1, 1, 1, 1)
    z = latents.transpose(1, 2) * std + mean  # (B, C, F, h, w), diffusers' de-normalisation
    x = vae.post_quant_conv(z.to(vae.post_quant_conv.weight.dtype))
    outputs = []
    for i in range(x.shape[2]):
        outputs.append(vae.decoder(x[:, :, i: i + 1], feat_cache=cache, feat_idx=[0], first_chunk=done + i == 0))
    frames = torch.cat(outputs, 2).clamp(-1.0, 1.0)
    video = (frames.float().transpose(1, 2) * 0.5 + 0.5).clamp(0, 1)
    return video, VaeState(tuple(cache), done + x.shape[2], b)
