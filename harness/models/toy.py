"""The embedded `toy` backend: small Self-Forcing-shaped AR video diffusion models of the shapes world.

Three shipped models share one architecture (assets/models/):
- `toy_flow`, the flow-matching model trained by `harness.models.toy_train` (`refinery train-world`)
  under diffusion forcing: not step-distilled, so many ODE steps with CFG sample it best; the teacher of
- `toy_sf`, a 4-step generator distilled from it the Self-Forcing way, and `toy_causvid`, a 3-step
  generator distilled CausVid's way (`harness.models.toy_distill`, `refinery distill`). A distilled
  model names its teacher, whose denoiser is DMD's real score when adapters are trained on it.
`toy` is the default base's name: `toy_sf`, as the real bases the papers refine are step-distilled.

Three parts:
- `FrameAutoencoder`, the "VAE": 32x32 RGB frame <-> 4x16x16 latent, normalised to unit scale;
- `TextEncoder`: word embeddings over the world's vocabulary and a small transformer; the empty
  prompt is the unconditional branch (a learned null token);
- `CausalDenoiser`: a transformer over 4x4 latent patches, block-causal over chunks of 3 latent
  frames, per-frame noise level through adaLN, text through cross-attention, a KV cache of clean
  chunks. It predicts the velocity (noise - x0), from which x0 = x - sigma * v.

Attention is local, as Self-Forcing's `local_attn_size`: a chunk sees itself and the
`context_chunks` chunks before it (0: the whole prefix). The shapes world is Markov in three frames
(position, velocity, acceleration), so one chunk of context suffices, and training on short windows
then matches what the model sees at every step of a rollout.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from torch import nn

from harness.assets import asset
from harness.errors import UsageError
from harness.models.base import Cond, KVCache, ModelSpec
from harness.models.weights import module_digest
from harness.world.grammar import VOCABULARY, parse


@dataclass(frozen=True)
class ToyConfig:
    frame_size: int = 32
    latent_channels: int = 4
    latent_size: int = 16
    patch: int = 4
    dim: int = 128
    depth: int = 4
    heads: int = 4
    text_dim: int = 64
    text_depth: int = 2
    max_frames: int = 24
    frames_per_chunk: int = 3
    num_chunks: int = 7
    context_chunks: int = 1  # earlier chunks a chunk attends to; 0 = all of them

    @property
    def tokens_per_frame(self) -> int:
        return (self.latent_size // self.patch) ** 2


TOKENS = ["<pad>", "<null>", *sorted(VOCABULARY)]
MAX_PROMPT_TOKENS = 12


# ----------------------------------------------------------------------------------------------
# autoencoder


DECODE_BLOCK = 48  # frames per decoder call


class FrameAutoencoder(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        c, width = cfg.latent_channels, 64
        halvings = int(math.log2(cfg.frame_size // cfg.latent_size))
        down, up = [], []
        for _ in range(halvings):
            down += [nn.Conv2d(width, width, 4, stride=2, padding=1), nn.SiLU(),
                     nn.Conv2d(width, width, 3, padding=1), nn.SiLU()]
            up += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1), nn.SiLU()]
        self.encoder = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.SiLU(), *down,
                                     nn.Conv2d(width, c, 3, padding=1))
        self.decoder = nn.Sequential(nn.Conv2d(c, width, 3, padding=1), nn.SiLU(),
                                     nn.Conv2d(width, width, 3, padding=1), nn.SiLU(), *up,
                                     nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
                                     nn.Conv2d(width, 3, 3, padding=1))
        # latent normalisation, like Wan's latents_mean / latents_std; set after training
        self.register_buffer("latent_mean", torch.zeros(c))
        self.register_buffer("latent_std", torch.ones(c))
        # channels-last convolutions run ~1.5x faster on CPU (oneDNN); values equal within float rounding
        self.decoder.to(memory_format=torch.channels_last)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> normalised latents (N, C, h, w)."""
        z = self.encoder(frames * 2 - 1)
        return (z - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """normalised latents (N, C, h, w) -> (N, 3, H, W) in [0, 1]."""
        z = z * self.latent_std[:, None, None] + self.latent_mean[:, None, None]
        # blocks of frames keep the 32x32 feature maps in cache: search methods decode hundreds at once
        frames = torch.cat([self.decoder(block) for block in z.split(DECODE_BLOCK)])
        return (frames * 0.5 + 0.5).clamp(0, 1).contiguous()


# ----------------------------------------------------------------------------------------------
# text encoder


def tokenize(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Word ids (B, L) and a mask; "" is the unconditional prompt (one null token)."""
    index = {w: i for i, w in enumerate(TOKENS)}
    ids = torch.zeros(len(prompts), MAX_PROMPT_TOKENS, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt == "":
            words = ["<null>"]
        else:
            words = parse(prompt).text.split()  # validates vocabulary and grammar
        ids[row, : len(words)] = torch.tensor([index[w] for w in words])
    return ids, ids != 0


class TextEncoder(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.embed = nn.Embedding(len(TOKENS), cfg.text_dim)
        self.pos = nn.Parameter(torch.randn(MAX_PROMPT_TOKENS, cfg.text_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.text_dim, 4, 2 * cfg.text_dim, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.text_depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.text_dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids) + self.pos[: ids.shape[1]]
        return self.norm(self.blocks(h, src_key_padding_mask=~mask))


# ----------------------------------------------------------------------------------------------
# causal denoiser


def sigma_embedding(sigma: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of 1000 * sigma, (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = (sigma.float() * 1000.0)[..., None] * freqs
    return torch.cat([args.cos(), args.sin()], dim=-1)


class Block(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        d, self.heads = cfg.dim, cfg.heads
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm_x = nn.LayerNorm(d)
        self.cross_q = nn.Linear(d, d)
        self.cross_kv = nn.Linear(cfg.text_dim, 2 * d)
        self.cross_proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d))
        self.modulation = nn.Linear(d, 6 * d)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, -1).transpose(1, 2)

    def forward(self, h, temb, tokens_per_frame, text, text_mask, context=None, attn_mask=None, repeat=1):
        """h (B, N, D); temb (B, F, D) per-frame time features; context: cached (k, v) or None, each
        of its rows serving `repeat` consecutive rows of h (candidates share their video's history).

        Returns the new h and this chunk's (k, v) so that commit can store them.
        """
        modulation = self.modulation(temb).repeat_interleave(tokens_per_frame, 1)
        shift1, scale1, gate1, shift2, scale2, gate2 = modulation.chunk(6, dim=-1)
        q, k, v = self.qkv(self.norm1(h) * (1 + scale1) + shift1).chunk(3, dim=-1)
        q, k, v = self._split(q), self._split(k), self._split(v)
        if context is None:
            keys, values = k, v
        else:
            keys = torch.cat([context[0].repeat_interleave(repeat, 0) if repeat > 1 else context[0], k], 2)
            values = torch.cat([context[1].repeat_interleave(repeat, 0) if repeat > 1 else context[1], v], 2)
        a = F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask)
        h = h + gate1 * self.proj(a.transpose(1, 2).flatten(2))
        ck, cv = self.cross_kv(text).chunk(2, dim=-1)
        c = F.scaled_dot_product_attention(self._split(self.cross_q(self.norm_x(h))), self._split(ck),
                                           self._split(cv), attn_mask=text_mask[:, None, None, :])
        h = h + self.cross_proj(c.transpose(1, 2).flatten(2))
        h = h + gate2 * self.mlp(self.norm2(h) * (1 + scale2) + shift2)
        return h, (k, v)


class CausalDenoiser(nn.Module):
    gradient_checkpointing = False  # training: recompute each block in the backward pass (harness.train.scale)

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.cfg = cfg
        patch_dim = cfg.latent_channels * cfg.patch ** 2
        self.patch_in = nn.Linear(patch_dim, cfg.dim)
        self.spatial_pos = nn.Parameter(torch.randn(cfg.tokens_per_frame, cfg.dim) * 0.02)
        self.frame_pos = nn.Parameter(torch.randn(cfg.max_frames, cfg.dim) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        # the pooled prompt joins the noise level in adaLN: global attributes (colour, shape, motion)
        # reach every token directly, which a small model learns far faster than cross-attention alone
        self.text_pool = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(cfg.dim, elementwise_affine=False)
        self.out_modulation = nn.Linear(cfg.dim, 2 * cfg.dim)
        self.patch_out = nn.Linear(cfg.dim, patch_dim)
        for layer in (self.out_modulation, self.patch_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        b, f, c, hh, ww = x.shape
        p = self.cfg.patch
        x = x.view(b, f, c, hh // p, p, ww // p, p).permute(0, 1, 3, 5, 2, 4, 6)
        return x.reshape(b, f * (hh // p) * (ww // p), c * p * p)

    def unpatchify(self, t: torch.Tensor, frames: int) -> torch.Tensor:
        cfg, p = self.cfg, self.cfg.patch
        g = cfg.latent_size // p
        t = t.view(t.shape[0], frames, g, g, cfg.latent_channels, p, p).permute(0, 1, 4, 2, 5, 3, 6)
        return t.reshape(t.shape[0], frames, cfg.latent_channels, cfg.latent_size, cfg.latent_size)

    def forward(self, x, sigma, text, text_mask, start_frame=0, contexts=None, attn_mask=None, repeat=1):
        """Velocity for latents x (B, F, C, h, w) at per-frame noise levels sigma (B, F).

        contexts: per-layer (k, v) to attend to besides x (the cached frames before `start_frame`),
        each row serving `repeat` rows of x; or None. Returns (velocity, per-layer (k, v) of x).
        """
        b, f = x.shape[:2]
        n = self.cfg.tokens_per_frame
        pos = self.frame_pos[start_frame: start_frame + f].repeat_interleave(n, 0) + self.spatial_pos.repeat(f, 1)
        h = self.patch_in(self.patchify(x)) + pos
        weights = text_mask.float() / text_mask.float().sum(1, keepdim=True)
        pooled = self.text_pool(torch.einsum("bl,bld->bd", weights, text))
        temb = self.time_mlp(sigma_embedding(sigma, self.cfg.dim)) + pooled[:, None]  # (B, F, D)
        kvs = []
        checkpointed = self.gradient_checkpointing and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            args = (h, temb, n, text, text_mask, None if contexts is None else contexts[i], attn_mask, repeat)
            h, kv = checkpoint(block, *args, use_reentrant=False) if checkpointed else block(*args)
            kvs.append(kv)
        shift, scale = self.out_modulation(temb).repeat_interleave(n, 1).chunk(2, dim=-1)
        out = self.patch_out(self.norm_out(h) * (1 + scale) + shift)
        return self.unpatchify(out, f), kvs


def block_causal_mask(frames: int, cfg: ToyConfig) -> torch.Tensor:
    """Boolean (T, T) mask: a token sees every token of its own chunk and of the `context_chunks`
    chunks before it (all earlier chunks when that is 0)."""
    chunk = torch.arange(frames).div(cfg.frames_per_chunk, rounding_mode="floor")
    chunk = chunk.repeat_interleave(cfg.tokens_per_frame)
    lag = chunk[:, None] - chunk[None, :]
    return (lag >= 0) & (lag <= cfg.context_chunks) if cfg.context_chunks else lag >= 0


# ----------------------------------------------------------------------------------------------
# the VideoModel


class ToyVideoModel(nn.Module):
    """The `toy` backend: implements harness.models.base.VideoModel."""

    def __init__(self, cfg: ToyConfig | None = None):
        super().__init__()
        self.cfg = cfg or ToyConfig()
        self.vae = FrameAutoencoder(self.cfg)
        self.text = TextEncoder(self.cfg)
        self.denoiser = CausalDenoiser(self.cfg)
        self.num_chunks = self.cfg.num_chunks  # rollout length; may differ from training's
        self.source = "untrained"
        self.name = "toy_flow"  # a model trained from scratch is a flow model; distillation renames it
        self.teacher: str | None = None  # the shipped name or file this model was distilled from
        self.loaded_digest: str | None = None  # set by load_toy

    @property
    def spec(self) -> ModelSpec:
        c = self.cfg
        return ModelSpec(name=self.name, frames_per_chunk=c.frames_per_chunk, num_chunks=self.num_chunks,
                         latent_shape=(c.latent_channels, c.latent_size, c.latent_size),
                         video_shape=(3, c.frame_size, c.frame_size),
                         cache_bytes_per_frame=c.depth * 2 * c.tokens_per_frame * c.dim * 4)

    def with_chunks(self, num_chunks: int) -> "ToyVideoModel":
        """A view of the same weights that rolls out `num_chunks` chunks (at most max_frames frames)."""
        if not 1 <= num_chunks * self.cfg.frames_per_chunk <= self.cfg.max_frames:
            raise UsageError(f"model.num_chunks={num_chunks} is out of range; the toy model takes 1.."
                             f"{self.cfg.max_frames // self.cfg.frames_per_chunk} chunks")
        view = copy.copy(self)  # shares parameters, owns its chunk count
        view.num_chunks = num_chunks
        return view

    # -- contract ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.denoiser.patch_out.weight.device

    def validate_prompts(self, prompts: list[str]) -> None:
        for prompt in prompts:
            if prompt:
                parse(prompt)  # a word outside the world's vocabulary or grammar is named

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Cond:
        ids, mask = tokenize(prompts)
        return Cond(self.text(ids, mask), mask, tuple(prompts))

    def new_cache(self, batch: int, start: int = 0) -> KVCache:
        return KVCache(batch=batch, frames=start)

    def _check_batch(self, x: torch.Tensor, cache: KVCache) -> int:
        if x.shape[0] % cache.batch:
            raise ValueError(f"batch {x.shape[0]} is not a multiple of the cache batch {cache.batch}")
        return x.shape[0] // cache.batch

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: Cond, cache: KVCache) -> torch.Tensor:
        """The raw velocity prediction for a chunk; differentiable (training uses it)."""
        k = self._check_batch(x, cache)
        cond = cond.repeat(x.shape[0] // cond.tokens.shape[0])
        sig = torch.as_tensor(float(sigma), dtype=torch.float32).reshape(-1, 1).expand(x.shape[0], x.shape[1])
        v, _ = self.denoiser(x, sig, cond.tokens, cond.mask, cache.frames, cache.layers or None, repeat=k)
        return v

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma: float, cond: Cond, cache: KVCache) -> torch.Tensor:
        return x - float(sigma) * self.velocity(x, sigma, cond, cache)

    @torch.no_grad()
    def commit(self, x0: torch.Tensor, cond: Cond, cache: KVCache) -> None:
        self._check_batch(x0, cache)
        sig = torch.zeros(x0.shape[0], x0.shape[1])
        _, kvs = self.denoiser(x0, sig, cond.tokens, cond.mask, cache.frames, cache.layers or None)
        if cache.frames:
            kvs = [(torch.cat([a, k], 2), torch.cat([b, v], 2)) for (a, b), (k, v) in zip(cache.layers, kvs)]
        keep = self.cfg.context_chunks * self.cfg.frames_per_chunk * self.cfg.tokens_per_frame
        cache.layers = [(k[:, :, -keep:], v[:, :, -keep:]) for k, v in kvs] if keep else kvs
        cache.frames += x0.shape[1]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        b, f = latents.shape[:2]
        return self.vae.decode(latents.flatten(0, 1)).view(b, f, 3, self.cfg.frame_size, self.cfg.frame_size)

    def decode_frames(self, latents: torch.Tensor, frames: list[int]) -> torch.Tensor:
        """Only the video frames `frames` (ascending indices), differentiable: the autoencoder decodes
        each frame from its own latent frame (reward training, harness.train.objectives)."""
        picked = latents[:, frames]
        return self.decode.__wrapped__(self, picked)

    @torch.no_grad()
    def decode_next(self, latents: torch.Tensor, state: None) -> tuple[torch.Tensor, None]:
        """The autoencoder decodes frame by frame: a chunk needs no state of the chunks before it."""
        return self.decode(latents), None

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """(B, F, 3, H, W) in [0, 1] -> latents (B, F, C, h, w)."""
        b, f = video.shape[:2]
        z = self.vae.encode(video.flatten(0, 1))
        return z.view(b, f, *z.shape[1:])

    @torch.no_grad()
    def recompute_denoise(self, history: torch.Tensor, x: torch.Tensor, sigma: float, cond: Cond) -> torch.Tensor:
        """x0 for chunk x given clean `history` latents, by one block-causal pass over the whole
        prefix without a cache. Slower; the reference that the cached path must equal."""
        seq = torch.cat([history, x], 1)
        sig = torch.cat([torch.zeros(x.shape[0], history.shape[1]), torch.full(x.shape[:2], float(sigma))], 1)
        mask = block_causal_mask(seq.shape[1], self.cfg)
        v, _ = self.denoiser(seq, sig, cond.tokens, cond.mask, 0, None, mask)
        return x - float(sigma) * v[:, history.shape[1]:]

    def digest(self) -> str:
        # a loaded model's weights are fixed: hashed once, at load; others (in training) every call
        return self.loaded_digest or module_digest(self)

    def describe(self) -> dict[str, Any]:
        return {"backend": "toy", "name": self.name, "config": asdict(self.cfg), "num_chunks": self.num_chunks,
                "source": self.source, "teacher": self.teacher, "parameters": sum(p.numel() for p in self.parameters())}


    # -- training (harness.models.base.TrainableBackend) -------------------------------------------
    @property
    def trainable(self) -> nn.Module:
        return self.denoiser

    output_head = "patch_out"

    def lora_targets(self, module: nn.Module) -> list[str]:
        """Every linear layer of the denoiser."""
        return [name for name, m in module.named_modules() if isinstance(m, nn.Linear)]

    def with_trainable(self, module: nn.Module) -> "ToyVideoModel":
        view = copy.copy(self)
        view._modules = dict(self._modules, denoiser=module)
        return view

    def chunk_forward(self, x: torch.Tensor, timesteps: torch.Tensor, cond: Cond, cache: KVCache,
                      extra: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
        k = self._check_batch(x, cache)
        cond = cond.repeat(x.shape[0] // cond.tokens.shape[0])
        context, repeat = cache.layers or None, k
        if extra is not None:  # per-row tokens: the history joins them per row
            context = extra if context is None else [
                (torch.cat([a.repeat_interleave(k, 0), ea], 2), torch.cat([b.repeat_interleave(k, 0), eb], 2))
                for (a, b), (ea, eb) in zip(context, extra)]
            repeat = 1
        return self.denoiser(x, (timesteps / 1000.0).float(), cond.tokens, cond.mask, cache.frames, context,
                             repeat=repeat)

    def dmd_scores(self, weights_dir: Path) -> tuple["ToyClipScore", "ToyClipScore"]:
        """DMD's score networks over whole clips (block-causal, as diffusion forcing trained them): the
        real score is the teacher's denoiser (the model's own when it has none, as the flow model `toy_flow`),
        and the fake score starts as a copy of it, as Self-Forcing's critic starts from Wan's base."""
        real = load_toy(self.teacher).denoiser if self.teacher else self.denoiser
        return ToyClipScore(real, self.cfg), ToyClipScore(copy.deepcopy(real), self.cfg)


class ToyClipScore:
    """A toy denoiser scoring whole clips at one noise level per video (harness.models.base.ScoreNet)."""

    def __init__(self, module: nn.Module, cfg: ToyConfig):
        self.module, self.cfg = module, cfg

    def velocity(self, x_t: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        frames = x_t.shape[1]
        v, _ = self.module(x_t, sigma[:, None].expand(-1, frames).float(), cond.tokens, cond.mask, 0, None,
                           block_causal_mask(frames, self.cfg))
        return v


# ----------------------------------------------------------------------------------------------
# weights

DEFAULT = "toy_sf"  # what `toy` (sweeps/model/toy.yaml) and load_toy() name
SHIPPED = {name: asset("models", f"{name}.safetensors") for name in ("toy_flow", "toy_sf", "toy_causvid")}
SHIPPED["toy"] = SHIPPED[DEFAULT]
FLOW_WEIGHTS = SHIPPED["toy_flow"]  # what `refinery train-world` writes: the teacher of the distilled ones
REBUILD = {"toy_flow": "refinery train-world", "toy_sf": "refinery distill recipe=self_forcing",
           "toy_causvid": "refinery distill recipe=causvid"}


def shipped_or_path(value: str | Path | None) -> Path:
    """A shipped model's name (toy, toy_flow, toy_sf, toy_causvid) or a checkpoint path; None: toy."""
    key = "toy" if value is None else str(value)
    return SHIPPED.get(key, Path(key))


def load_toy(path: str | Path | None = None) -> ToyVideoModel:
    """Load toy weights (a shipped model's name or a path; None: toy, i.e. toy_sf) only through safetensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = shipped_or_path(path)
    if not path.is_file():
        shipped = next((name for name, p in SHIPPED.items() if p == path), None)
        raise UsageError(f"toy checkpoint {path} is missing; " + (
            f"it ships with the package (assets/models/) and is rebuilt by `{REBUILD[shipped]}`" if shipped else
            "give a file written by `refinery train-world` or `refinery distill`"))
    try:
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UsageError(f"toy checkpoint {path} is corrupt or not a safetensors file ({exc}); "
                         "restore it from the package or rebuild it (`refinery train-world`, `refinery distill`)") from None
    import json
    cfg = ToyConfig(**json.loads(meta.get("toy_config", "{}")))
    model = ToyVideoModel(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UsageError(f"toy checkpoint {path} does not fit the toy architecture "
                         f"(missing {len(missing)}, unexpected {len(unexpected)} tensors); "
                         "rebuild it (`refinery train-world`, `refinery distill`)")
    model.source = str(path)
    model.name = meta.get("name", "toy_flow")  # the flow model's file predates the name
    model.teacher = meta.get("teacher") or None
    model.loaded_digest = module_digest(model)
    return model.eval()
