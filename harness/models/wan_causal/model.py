"""`WanCausalModel`: Self-Forcing / CausVid as a VideoModel (harness.models.base) and a trainable
backend (harness.models.base.TrainableBackend), over diffusers' Wan components.

- transformer: `WanTransformer3DModel` driven block-causally by harness.models.wan_causal.transformer
  (KV cache of committed clean chunks, RoPE frame offset, per-frame noise levels);
- text: umT5 (`UMT5EncoderModel`) and its tokenizer; the empty prompt "" is the unconditional branch
  and encodes the configured negative prompt, as Wan's and Self-Forcing's CFG do;
- vae: `AutoencoderKLWan`, decoded chunk by chunk from its causal feature cache.

The KV cache holds, per layer, the keys (after RoPE) and values of the committed frames that the
next chunk attends to: every frame, or with local attention (Self-Forcing's `local_attn_size` L and
`sink_size` S) the first S frames and the last L - S - F before the next chunk of F frames, which
together with the chunk itself are the L frames upstream's rolling cache holds. `denoise` reads the
cache and never writes it; `commit` re-runs the clean chunk at timestep 0 and appends it. A batch of
k * B rows against a cache of B rows is k candidates per video: each layer's history is read once
per call and repeated for the candidates' attention only, never stored per candidate.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.errors import UsageError
from harness.models.base import Cond, EmbeddingStore, KVCache, ModelSpec, timestep_of
from harness.models.wan_causal.parts import load_scores
from harness.models.wan_causal.text import WanTextEncoder
from harness.models.wan_causal.transformer import CausalWan, LayerKV
from harness.models.wan_causal.vae import VaeState, decode_frames, decode_latents
from harness.models.weights import module_digest
from harness.store.files import sha256_hex

SPATIAL_COMPRESSION = 8  # Wan2.1's VAE: 8x8 pixels per latent, 4 frames per latent frame after the first


@dataclass(frozen=True)
class WanCausalConfig:
    name: str
    frames_per_chunk: int = 3
    num_chunks: int = 7
    height: int = 480  # pixels of a decoded frame
    width: int = 832
    local_attn_size: int = -1  # frames one chunk attends to, itself included; -1: the whole prefix
    sink_size: int = 0  # first frames always attended under local attention
    max_prompt_tokens: int = 512
    negative_prompt: str | None = ""  # what the unconditional branch ("") encodes; None: no such branch
    fps: int = 16

    def __post_init__(self) -> None:
        f = self.frames_per_chunk
        if self.local_attn_size != -1 and not (self.local_attn_size >= f + self.sink_size and self.sink_size >= 0):
            raise UsageError(f"model.local_attn_size={self.local_attn_size} with sink_size={self.sink_size} leaves "
                             f"no room for a chunk of {f} frames; use -1 (whole prefix) or >= {f + self.sink_size}")
        if self.height % SPATIAL_COMPRESSION or self.width % SPATIAL_COMPRESSION:
            raise UsageError(f"model height {self.height} x width {self.width} is not a multiple of "
                             f"{SPATIAL_COMPRESSION}; Wan's VAE needs multiples of {SPATIAL_COMPRESSION}")


@dataclass
class WanKVCache(KVCache):
    kept: list[int] = field(default_factory=list)  # absolute indices of the cached frames, ascending


class WanCausalModel(nn.Module):
    """A causal Wan2.1 text-to-video generator with its text encoder and VAE."""

    def __init__(self, cfg: WanCausalConfig, transformer: nn.Module, text: WanTextEncoder, vae: nn.Module,
                 digest: str, source: dict[str, str], scores: dict[str, Any] | None = None,
                 text_digest: str | None = None):
        super().__init__()
        self.text_digest = text_digest  # of the text encoder's and tokenizer's files; None: of its tensors
        # (text_key, text) -> (tokens, mask) on the CPU, by encode_suite
        self.embedded: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self.cfg = cfg
        self.scores = scores or {}  # where DMD's real and fake score networks come from
        self.transformer = transformer
        self.text_encoder = text.encoder  # registered, so .to() and requires_grad_ reach it
        self.vae = vae
        self.text = text
        self.causal = CausalWan(transformer)
        self._digest = digest
        self.source = source

    # -- shape ---------------------------------------------------------------------------------
    @property
    def spec(self) -> ModelSpec:
        c = self.cfg
        latent = (self.transformer.config.in_channels, c.height // SPATIAL_COMPRESSION, c.width // SPATIAL_COMPRESSION)
        t = self.transformer.config
        tokens = (latent[1] // t.patch_size[1]) * (latent[2] // t.patch_size[2])
        cache = t.num_layers * 2 * tokens * t.num_attention_heads * t.attention_head_dim * self.transformer.dtype.itemsize
        return ModelSpec(name=c.name, frames_per_chunk=c.frames_per_chunk, num_chunks=c.num_chunks,
                         latent_shape=latent, video_shape=(3, c.height, c.width), frames_per_latent=4,
                         has_uncond=c.negative_prompt is not None, fps=c.fps, cache_bytes_per_frame=cache)

    @property
    def device(self) -> torch.device:
        return self.transformer.proj_out.weight.device

    def with_chunks(self, num_chunks: int) -> "WanCausalModel":
        longest = self.transformer.config.rope_max_seq_len // self.cfg.frames_per_chunk
        if not 1 <= num_chunks <= longest:
            raise UsageError(f"model.num_chunks={num_chunks} is out of range; this transformer's positions take "
                             f"1..{longest} chunks (Self-Forcing's and CausVid's checkpoints were trained on 7)")
        view = copy.copy(self)  # shares the modules, owns its chunk count
        view.cfg = WanCausalConfig(**{**asdict(self.cfg), "num_chunks": num_chunks})
        return view

    # -- text ----------------------------------------------------------------------------------
    def validate_prompts(self, prompts: list[str]) -> None:
        self.text.check_prompts([self._text(p) for p in prompts])

    def _text(self, prompt: str) -> str:
        return prompt if prompt or self.cfg.negative_prompt is None else self.cfg.negative_prompt

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Cond:
        texts = [(self.text_key(), self._text(p)) for p in prompts] if self.embedded else []
        if texts and all(t in self.embedded for t in texts):  # encoded by encode_suite
            tokens, mask = (torch.stack(rows).to(self.device) for rows in zip(*(self.embedded[t] for t in texts)))
        else:
            tokens, mask = (t.to(self.device) for t in self.text([self._text(p) for p in prompts]))
        return Cond(tokens, mask, tuple(prompts))

    @torch.no_grad()
    def encode_suite(self, prompts: list[str], embeddings: EmbeddingStore | None) -> int:
        """harness.models.base.VideoModel.encode_suite: each text once, from `embeddings` where it is
        there; then the text encoder leaves the accelerator for the CPU."""
        texts = [self._text(p) for p in [*prompts, *([""] if self.cfg.negative_prompt is not None else [])]]
        key, encoded = self.text_key(), 0
        for text in dict.fromkeys(t for t in texts if (key, t) not in self.embedded):
            found = embeddings.get(key, text) if embeddings is not None else None
            if found is None:
                self.text_encoder.to(self.device)  # back where the key says it encodes, if it had left
                tokens, mask = self.text([text])
                found, encoded = {"tokens": tokens[0].cpu(), "mask": mask[0].cpu()}, encoded + 1
                if embeddings is not None:
                    embeddings.put(key, text, found)
            self.embedded[key, text] = (found["tokens"], found["mask"])
        self.text_encoder.to("cpu")  # prompts are encoded: its memory goes to generation
        return encoded

    def text_key(self) -> str:
        """What an embedding's bits depend on besides its text: the encoder's weights and tokenizer, its
        length, dtype and the model's device, and on a CPU the thread count (float32 sums split by
        threads)."""
        device = self.device
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
        weights = self.text_digest or module_digest(self.text_encoder)
        return sha256_hex((weights, str(self.text.max_length), str(next(self.text_encoder.parameters()).dtype), where))[:16]

    # -- denoising -----------------------------------------------------------------------------
    def new_cache(self, batch: int, start: int = 0) -> WanKVCache:
        return WanKVCache(batch=batch, frames=start)

    def _rows(self, x: torch.Tensor, cache: KVCache) -> int:
        if x.shape[0] % cache.batch:
            raise ValueError(f"batch {x.shape[0]} is not a multiple of the cache batch {cache.batch}")
        return x.shape[0] // cache.batch

    def chunk_forward(self, x: torch.Tensor, timesteps: torch.Tensor, cond: Cond, cache: KVCache,
                      extra: list[LayerKV] | None = None) -> tuple[torch.Tensor, list[LayerKV]]:
        """Velocity of the chunk x (k * B rows) that follows the cache, conditioned on per-frame
        timesteps (k * B, F), attending to the cache and to `extra` (the keys and values of other
        tokens, rows as x's); differentiable. Returns it with the chunk's keys and values."""
        k = self._rows(x, cache)
        context, repeat = self._context(cache, k, extra)
        text = cond.tokens.repeat_interleave(x.shape[0] // cond.tokens.shape[0], 0)
        return self.causal.forward(x, timesteps, text, cache.frames, context, repeat)

    @staticmethod
    def _context(cache: KVCache, k: int, extra: list[LayerKV] | None) -> tuple[list[LayerKV] | None, int]:
        """The per-layer context and how many query rows share each of its rows. Extra tokens are
        per query row, so a history joined with them is repeated per row for that call."""
        history = cache.layers or None
        if extra is None:
            return history, k
        if history is None:
            return extra, 1
        return [LayerKV.cat([LayerKV(h.k.repeat_interleave(k, 0), h.v.repeat_interleave(k, 0)), e])
                for h, e in zip(history, extra)], 1

    def velocity(self, x: torch.Tensor, sigma: float, cond: Cond, cache: KVCache) -> torch.Tensor:
        timesteps = torch.full(x.shape[:2], timestep_of(sigma), dtype=torch.float64, device=x.device)
        return self.chunk_forward(x, timesteps, cond, cache)[0]

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma: float, cond: Cond, cache: KVCache) -> torch.Tensor:
        v = self.velocity(x, sigma, cond, cache)
        return (x.double() - float(sigma) * v.double()).to(x.dtype)  # Self-Forcing converts in float64

    @torch.no_grad()
    def commit(self, x0: torch.Tensor, cond: Cond, cache: WanKVCache) -> None:
        if self._rows(x0, cache) != 1:
            raise ValueError("commit takes one row per cache entry")
        zeros = torch.zeros(x0.shape[:2], dtype=torch.float64, device=x0.device)
        _, produced = self.chunk_forward(x0, zeros, cond, cache)
        f = x0.shape[1]
        layers = [LayerKV.cat([old, new]) for old, new in zip(cache.layers, produced)] if cache.layers else produced
        kept = cache.kept + list(range(cache.frames, cache.frames + f))
        cache.frames += f
        attended = self._attended_by_next(kept, cache.frames)
        if len(attended) < len(kept):
            n = self.causal.tokens_per_frame(*x0.shape[-2:])
            rows = torch.cat([torch.arange(i * n, (i + 1) * n) for i, frame in enumerate(kept) if frame in attended])
            layers = [LayerKV(kv.k.index_select(1, rows.to(x0.device)), kv.v.index_select(1, rows.to(x0.device)))
                      for kv in layers]
            kept = [frame for frame in kept if frame in attended]
        cache.layers, cache.kept = layers, kept

    def _attended_by_next(self, kept: list[int], end: int) -> set[int]:
        """The cached frames that the chunk starting at frame `end` attends to."""
        c = self.cfg
        if c.local_attn_size == -1:
            return set(kept)
        recent = end + c.frames_per_chunk - (c.local_attn_size - c.sink_size)
        return {f for f in kept if f < c.sink_size or f >= recent}

    @torch.no_grad()
    def recompute_denoise(self, history: torch.Tensor, x: torch.Tensor, sigma: float, cond: Cond) -> torch.Tensor:
        """x0 for chunk x after the clean `history` latents by one masked pass over the whole prefix
        without a cache (block-causal, with the local window and sink): the reference the cached path
        must equal."""
        seq = torch.cat([history, x], 1)
        t = torch.cat([torch.zeros(x.shape[0], history.shape[1], dtype=torch.float64),
                       torch.full(x.shape[:2], timestep_of(sigma), dtype=torch.float64)], 1).to(x.device)
        n = self.causal.tokens_per_frame(*x.shape[-2:])
        mask = self.attention_mask(seq.shape[1]).repeat_interleave(n, 0).repeat_interleave(n, 1).to(x.device)
        v, _ = self.causal.forward(seq, t, cond.tokens, 0, None, 1, mask)
        return (x.double() - float(sigma) * v[:, history.shape[1]:].double()).to(x.dtype)

    def attention_mask(self, frames: int) -> torch.Tensor:
        """(frames, frames) boolean: the frames each frame's chunk attends to."""
        f = self.cfg.frames_per_chunk
        chunk = torch.arange(frames) // f
        visible = chunk[None, :] <= chunk[:, None]
        if self.cfg.local_attn_size != -1:
            end = (chunk + 1) * f  # the query chunk's end
            cols = torch.arange(frames)
            recent = cols[None, :] >= end[:, None] - (self.cfg.local_attn_size - self.cfg.sink_size)
            visible &= recent | (cols[None, :] < self.cfg.sink_size)
        return visible

    # -- decoding ------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return decode_latents(self.vae, latents, None)[0]

    @torch.no_grad()
    def decode_next(self, latents: torch.Tensor, state: VaeState | None) -> tuple[torch.Tensor, VaeState]:
        return decode_latents(self.vae, latents, state)

    def decode_frames(self, latents: torch.Tensor, frames: list[int]) -> torch.Tensor:
        """Only the video frames `frames` (ascending), differentiable: decoded a chunk of latent frames at
        a time, each chunk checkpointed (harness.models.wan_causal.vae.decode_frames)."""
        return decode_frames(self.vae, latents, frames, self.cfg.frames_per_chunk)

    # -- identity ------------------------------------------------------------------------------
    def digest(self) -> str:
        return self._digest

    def describe(self) -> dict[str, Any]:
        return {"backend": "wan_causal", "config": asdict(self.cfg), "source": self.source,
                "transformer": dict(self.transformer.config),
                "parameters": sum(p.numel() for p in self.transformer.parameters())}

    # -- training (harness.models.base.TrainableBackend) -------------------------------------------
    @property
    def trainable(self) -> nn.Module:
        return self.transformer

    output_head = "proj_out"

    def lora_targets(self, module: nn.Module) -> list[str]:
        """Every linear layer of the transformer blocks (self- and cross-attention, feed-forward), as
        LongLive puts LoRA on Self-Forcing's generator."""
        return [name for name, m in module.named_modules() if isinstance(m, nn.Linear) and name.startswith("blocks.")]

    def dmd_scores(self, weights_dir: Path) -> tuple["WanClipScore", "WanClipScore"]:
        """Self-Forcing's DMD scores: the real score Wan2.1-T2V-14B, the fake score Wan2.1-T2V-1.3B
        (bidirectional Wan models; model config `dmd_scores`); at the tiny size, tiny random ones."""
        real, fake = load_scores(self.cfg.name, self.scores, Path(weights_dir), self.transformer.dtype, self.device)
        return WanClipScore(real), WanClipScore(fake)

    def with_trainable(self, module: nn.Module) -> "WanCausalModel":
        view = copy.copy(self)
        view._modules = dict(self._modules, transformer=module)
        view.causal = CausalWan(module)
        return view


class WanClipScore:
    """A bidirectional WanTransformer3DModel scoring whole clips, diffusers' own forward
    (harness.models.base.ScoreNet)."""

    def __init__(self, module: nn.Module):
        self.module = module

    def velocity(self, x_t: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        dtype = self.module.dtype
        out = self.module(x_t.transpose(1, 2).to(dtype), timestep=(1000.0 * sigma).to(dtype),
                          encoder_hidden_states=cond.tokens.to(dtype)).sample
        return out.transpose(1, 2)
