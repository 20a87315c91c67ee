"""The model contract every backend implements (DESIGN.md, "The model contract").

Noise levels are sigmas in [0, 1]; the timestep a model is conditioned on is 1000 * sigma unless the
level says otherwise (`NoiseLevel`: CausVid's integer timesteps sit next to, not on, its shifted
schedule). The flow convention is Wan's and Self-Forcing's: x_sigma = (1 - sigma) * x0 + sigma * noise,
velocity = noise - x0.
Latents are (B, F, C, H, W); videos are (B, F, 3, H, W) floats in [0, 1].

A denoise input may carry k candidates per cache entry: batch = cache batch * k, candidates of one
video adjacent (repeat_interleave order). This is how search methods batch their candidates.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """The timestep shift of SD3/Wan: sigma' = shift * sigma / (1 + (shift - 1) * sigma)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


class NoiseLevel(float):
    """A noise level sigma (a float: arithmetic on it is plain float arithmetic) that also carries the
    timestep the denoiser is conditioned on."""

    timestep: float

    def __new__(cls, sigma: float, timestep: float | None = None) -> "NoiseLevel":
        level = super().__new__(cls, sigma)
        level.timestep = 1000.0 * float(sigma) if timestep is None else float(timestep)
        return level

    def __repr__(self) -> str:
        return f"NoiseLevel({float(self)!r}, timestep={self.timestep!r})"


def timestep_of(sigma: float) -> float:
    """The conditioning timestep of a noise level; 1000 * sigma for a plain float."""
    return sigma.timestep if isinstance(sigma, NoiseLevel) else 1000.0 * float(sigma)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    frames_per_chunk: int
    num_chunks: int
    latent_shape: tuple[int, int, int]  # (C, H, W) of one latent frame
    video_shape: tuple[int, int, int]  # (3, H, W) of one decoded frame
    frames_per_latent: int = 1  # decoded frames per latent frame
    has_uncond: bool = True  # an unconditional branch exists, so CFG is possible
    fps: int = 8
    cache_bytes_per_frame: int = 0  # KV cache of one latent frame of one video, every layer (memory estimates)

    @property
    def num_latent_frames(self) -> int:
        return self.frames_per_chunk * self.num_chunks

    @property
    def video_frames(self) -> int:
        """Decoded frames of a whole video: the first latent frame gives one, every later one
        `frames_per_latent` (Wan's VAE: 21 latent frames -> 81 frames)."""
        return 1 + (self.num_latent_frames - 1) * self.frames_per_latent


@dataclass
class Cond:
    """Encoded prompts: per-token features and a padding mask (True = real token)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    prompts: tuple[str, ...] = ()

    def repeat(self, k: int) -> "Cond":
        if k == 1:
            return self
        return Cond(self.tokens.repeat_interleave(k, 0), self.mask.repeat_interleave(k, 0),
                    tuple(p for p in self.prompts for _ in range(k)))

    def select(self, index: torch.Tensor) -> "Cond":
        return Cond(self.tokens[index], self.mask[index], tuple(self.prompts[i] for i in index.tolist()))


@dataclass
class KVCache:
    """Per-layer keys and values of the committed clean chunks, in the backend's layout."""

    batch: int
    frames: int = 0  # latent frames before the next chunk (committed, or skipped by `start`)
    layers: list[Any] = field(default_factory=list)  # the backend's per-layer keys and values


class EmbeddingStore(Protocol):
    """Where prompt embeddings are kept between runs (harness.store.embeddings.PromptEmbeddings), by
    the key of the text encoder that made them and the exact text it encoded."""

    def get(self, encoder: str, text: str) -> dict[str, torch.Tensor] | None: ...

    def put(self, encoder: str, text: str, tensors: dict[str, torch.Tensor]) -> None: ...


def encode_suite(model: "VideoModel", prompts: list[str], embeddings: EmbeddingStore | None) -> int:
    """Let a backend encode a run's prompts once before generation (VideoModel.encode_suite); a backend
    whose encoder is trivial (the toy) has none and encodes as it goes. Returns the encoder's calls."""
    prepare = getattr(model, "encode_suite", None)
    return prepare(prompts, embeddings) if prepare is not None else 0


class VideoModel(Protocol):
    spec: ModelSpec
    device: torch.device

    def validate_prompts(self, prompts: list[str]) -> None:
        """Refuse, with a one-line UsageError, a prompt the model cannot take (outside the toy's
        vocabulary, longer than a text encoder's length); called before any compute."""

    def encode(self, prompts: list[str]) -> Cond:
        """The empty prompt "" is the unconditional branch (a backend may encode its negative prompt)."""

    # Optional, for a backend with a costly text encoder (wan_causal's umT5, 11 GB), called through
    # `encode_suite` above by the pipeline before generation:
    #   encode_suite(prompts, embeddings) -> int
    # encodes every prompt of the run and the unconditional branch once, one text at a time (so an
    # embedding depends on its text alone), reading from and writing to `embeddings` under a key of the
    # encoder (its weights' digest and whatever else changes the bits: dtype, device, threads); then
    # moves the encoder off the accelerator. `encode` afterwards takes those texts from memory,
    # bit-identical whether they were encoded now or read back. Returns how many texts it encoded.

    def new_cache(self, batch: int, start: int = 0) -> KVCache:
        """An empty cache for `batch` videos whose next chunk starts at latent frame `start`."""

    def denoise(self, x: torch.Tensor, sigma: float, cond: Cond, cache: KVCache) -> torch.Tensor:
        """x0 prediction for a noisy chunk (B*k, F, C, H, W). Never mutates `cache`."""

    def commit(self, x0: torch.Tensor, cond: Cond, cache: KVCache) -> None:
        """Run the clean chunk at sigma 0 and append its keys and values to `cache`."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, F, C, h, w) of whole videos -> frames (B, F', 3, H, W) in [0, 1]."""

    def decode_next(self, latents: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Decode latents that continue videos whose earlier latents were decoded into `state` (None:
        the videos' start; a state of B rows serves k * B latent rows, k candidates per video).
        Returns the frames and the state after them; never mutates `state`. Decoding a video chunk
        by chunk this way gives the frames of `decode` (a causal VAE carries state across chunks)."""

    def digest(self) -> str:
        """A content hash of the weights, part of every result's key."""

    def describe(self) -> dict[str, Any]: ...


class TrainableBackend(Protocol):
    """What training needs of a backend, beyond VideoModel; harness.train and the trained methods use
    nothing else, so they run on every backend that implements it (toy, wan_causal).

    - `trainable`: the module that takes LoRA (the denoiser / transformer); `lora_targets(module)`
      the names of its linear layers that adapters go on; `output_head` the name of its output
      projection (a noise refiner replaces it with a zero-initialised one of its own).
    - `with_trainable(module)`: a view of the model that runs `module` (an adapted copy sharing the
      base's weights) instead, sharing everything else (text encoder, VAE).
    - `chunk_forward`: the differentiable forward of a chunk after the cache, with explicit per-frame
      timesteps, also attending to `extra` keys and values (the output of another chunk_forward,
      e.g. a refiner's clean pass of the previous prediction), returning its own keys and values.
    - `dmd_scores(weights_dir)`: DMD's real and fake score networks (harness.train.objectives):
      for Self-Forcing separate bidirectional Wan models from local folders, for the toy its own
      denoiser over whole clips and a copy of it.
    """

    trainable: nn.Module
    output_head: str

    def lora_targets(self, module: nn.Module) -> list[str]: ...

    def with_trainable(self, module: nn.Module) -> "TrainableBackend": ...

    def chunk_forward(self, x: torch.Tensor, timesteps: torch.Tensor, cond: Cond, cache: KVCache,
                      extra: Any = None) -> tuple[torch.Tensor, Any]:
        """Velocity of chunk x after the cache, conditioned on per-frame timesteps (B, F)."""

    def dmd_scores(self, weights_dir: Any) -> tuple["ScoreNet", "ScoreNet"]: ...


class ScoreNet(Protocol):
    """A score network of whole clips, as DMD evaluates it: `module` holds its parameters (the fake
    score's train); `velocity` predicts noise - x0 for x_t (B, F, C, H, W) at one level per video,
    sigma (B,); differentiable in the module's parameters."""

    module: nn.Module

    def velocity(self, x_t: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor: ...
