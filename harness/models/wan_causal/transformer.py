"""diffusers' `WanTransformer3DModel`, run block-causally over chunks of latent frames.

diffusers' forward always places a clip at frame 0, conditions on one timestep per video (or per
token) and attends over its own tokens only. `chunk_forward` runs the same modules in the same
order, with three differences that make it Self-Forcing's causal generator:

- the RoPE of the time axis starts at `start_frame`, the chunk's absolute position;
- the noise level is per frame: the adaLN modulation of each token is its frame's (diffusers'
  per-token timestep path); a chunk whose frames share one level takes the cheaper per-video path;
- self-attention also attends to `context`, the keys and values of earlier frames (the KV cache),
  through `CausalSelfAttention`, an attention processor set on every block's `attn1` with diffusers'
  public `set_processor`. Nothing of diffusers is patched.

Numerics follow Self-Forcing where diffusers differs: the timestep sinusoid and the RoPE angles are
computed in float64 (diffusers: float32), then cast.

Layouts: latents (B, F, C, H, W); keys and values (B, tokens, heads, head_dim), keys after RoPE.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class LayerKV(NamedTuple):
    """One layer's keys (after RoPE) and values, (B, tokens, heads, head_dim) each."""

    k: torch.Tensor
    v: torch.Tensor

    @staticmethod
    def cat(parts: list["LayerKV"]) -> "LayerKV":
        if len(parts) == 1:
            return parts[0]
        return LayerKV(torch.cat([p.k for p in parts], 1), torch.cat([p.v for p in parts], 1))



@dataclass
class ForwardState:
    """What the attention processors of one forward read and write: the per-layer context to attend
    to (rows of a context are repeated `repeat` times to meet the query rows: candidates of one video
    share its history, which is therefore never copied per candidate into the cache), an optional
    boolean mask (tokens, tokens) for the masked recompute, and the new keys and values."""

    context: list[LayerKV] | None = None
    repeat: int = 1
    mask: torch.Tensor | None = None
    produced: list[LayerKV] = field(default_factory=list)


class CausalSelfAttention:
    """attn1's processor: q/k/v projections, RMS norms, RoPE, then SDPA over [context, own tokens]."""

    def __init__(self, layer: int, state_of: "CausalWan"):
        self.layer = layer
        self.owner = state_of

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, rotary_emb=None) -> torch.Tensor:
        state = self.owner.state
        q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        k = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
        v = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        q, k = apply_rope(q, rotary_emb), apply_rope(k, rotary_emb)
        state.produced.append(LayerKV(k, v))
        keys, values = k, v
        if state.context is not None:
            past = state.context[self.layer]
            if past.k.shape[1]:
                keys, values = _join(past.k, k, state.repeat), _join(past.v, v, state.repeat)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2),
                                             attn_mask=state.mask)
        out = out.transpose(1, 2).flatten(2).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


def _join(past: torch.Tensor, own: torch.Tensor, repeat: int) -> torch.Tensor:
    """[past tokens, own tokens] per row of `own`, each row of `past` serving `repeat` rows, written
    into one new tensor: this layer's history is read once and never held per candidate elsewhere."""
    b, p = past.shape[:2]
    out = own.new_empty(own.shape[0], p + own.shape[1], *own.shape[2:])
    out[:, :p].view(b, repeat, p, *own.shape[2:]).copy_(past.unsqueeze(1).expand(b, repeat, *past.shape[1:]))
    out[:, p:] = own
    return out


def apply_rope(x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i + 1) of x (B, N, heads, d) by the angles of `rotary` (float64)."""
    cos, sin = rotary
    x1, x2 = x.double().unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)
    return out.type_as(x)


def timestep_sinusoid(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """Self-Forcing's sinusoidal_embedding_1d, in float64: [cos, sin] of t * 10000^(-i / half)."""
    half = dim // 2
    t = timesteps.double().flatten()
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(t, freqs)
    return torch.cat([angles.cos(), angles.sin()], 1)


class CausalWan:
    """A WanTransformer3DModel (the module itself: trained, adapted, shared) driven chunk by chunk."""

    def __init__(self, transformer: nn.Module):
        self.transformer = transformer
        self.state = ForwardState()
        for i, block in enumerate(transformer.blocks):
            block.attn1.set_processor(CausalSelfAttention(i, self))
        cfg = transformer.config
        self.patch = tuple(cfg.patch_size)
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.attention_head_dim
        self.freq_dim = cfg.freq_dim
        self._angles = _rope_angles(self.head_dim, cfg.rope_max_seq_len)

    @property
    def num_layers(self) -> int:
        return len(self.transformer.blocks)

    def tokens_per_frame(self, height: int, width: int) -> int:
        return (height // self.patch[1]) * (width // self.patch[2])

    def rotary(self, start_frame: int, frames: int, height: int, width: int, device) -> tuple[torch.Tensor, ...]:
        """cos and sin (1, frames * h * w, 1, head_dim / 2) for frames start_frame .. start_frame + frames."""
        t_ang, h_ang, w_ang = (a.to(device) for a in self._angles)
        h, w = height // self.patch[1], width // self.patch[2]
        if start_frame + frames > t_ang.shape[0]:
            raise ValueError(f"frame {start_frame + frames} is past the RoPE table ({t_ang.shape[0]} frames)")
        grid = torch.cat([t_ang[start_frame: start_frame + frames].view(frames, 1, 1, -1).expand(frames, h, w, -1),
                          h_ang[:h].view(1, h, 1, -1).expand(frames, h, w, -1),
                          w_ang[:w].view(1, 1, w, -1).expand(frames, h, w, -1)], -1)
        angles = grid.reshape(1, frames * h * w, 1, -1)
        return angles.cos(), angles.sin()

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor, start_frame: int = 0,
                context: list[LayerKV] | None = None, repeat: int = 1,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, list[LayerKV]]:
        """Velocity (noise - x0) for latents x (B, F, C, H, W) at per-frame timesteps (B, F), text
        embeddings (B, L, text_dim), attending to `context` (per layer; each context row serves
        `repeat` consecutive rows of x). Returns it with the per-layer keys and values of x."""
        m = self.transformer
        b, f, _, height, width = x.shape
        n = self.tokens_per_frame(height, width)
        hidden = m.patch_embedding(x.transpose(1, 2).to(m.patch_embedding.weight.dtype))
        hidden = hidden.flatten(2).transpose(1, 2).contiguous()
        rotary = self.rotary(start_frame, f, height, width, x.device)
        text_emb = m.condition_embedder.text_embedder(text.to(hidden.dtype))
        temb, modulation = self._time(timesteps, text_emb.dtype)  # (B, F, dim), (B, F, 6, dim)
        uniform = bool((timesteps == timesteps[:, :1]).all())
        block_mod = modulation[:, 0] if uniform else modulation.repeat_interleave(n, 1)
        self.state = ForwardState(context, repeat, mask)
        checkpointed = m.gradient_checkpointing and torch.is_grad_enabled()
        try:
            for block in m.blocks:
                if checkpointed:  # diffusers' switch (enable_gradient_checkpointing) and function
                    hidden = m._gradient_checkpointing_func(self._replayable(block), hidden, text_emb, block_mod,
                                                            rotary)
                else:
                    hidden = block(hidden, text_emb, block_mod, rotary)
            produced = self.state.produced
        finally:
            self.state = ForwardState()
        shift, scale = (m.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)  # (B, F, 1, dim)
        frames = m.norm_out(hidden.float()).unflatten(1, (f, n))
        hidden = (frames * (1 + scale) + shift).flatten(1, 2).type_as(hidden)
        return self._unpatchify(m.proj_out(hidden), f, height, width), produced

    def _replayable(self, block: nn.Module):
        """The block as a function that the backward pass can run again: it attends to this forward's
        context (the recompute runs after the forward has ended), and only the first run records the
        block's keys and values."""
        state, runs = self.state, []

        def run(*inputs: torch.Tensor) -> torch.Tensor:
            outer = self.state
            self.state = state if not runs else ForwardState(state.context, state.repeat, state.mask)
            runs.append(True)
            try:
                return block(*inputs)
            finally:
                self.state = outer
        return run

    def _time(self, timesteps: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.transformer.condition_embedder
        sinusoid = timestep_sinusoid(timesteps, self.freq_dim)
        temb = emb.time_embedder(sinusoid.to(next(emb.time_embedder.parameters()).dtype)).to(dtype)
        projected = emb.time_proj(emb.act_fn(temb))
        b, f = timesteps.shape
        return temb.view(b, f, -1), projected.view(b, f, 6, -1)

    def _unpatchify(self, out: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
        pt, ph, pw = self.patch
        b = out.shape[0]
        out = out.reshape(b, frames // pt, height // ph, width // pw, pt, ph, pw, -1)
        out = out.permute(0, 1, 4, 7, 2, 5, 3, 6)  # (B, F, pt, C, h, ph, w, pw)
        return out.reshape(b, frames, -1, height, width)


def _rope_angles(head_dim: int, max_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-axis RoPE angles in float64, each (max_len, dim_axis / 2), split as Wan splits the head
    (h and w 2 * (d // 6) channels each, t the rest)."""
    hw = 2 * (head_dim // 6)
    dims = (head_dim - 2 * hw, hw, hw)
    pos = torch.arange(max_len, dtype=torch.float64)
    return tuple(torch.outer(pos, 1.0 / 10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)) for d in dims)
