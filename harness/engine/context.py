"""What a hook of the rollout loop (harness.engine.rollout) may read and keep: the Context of one
rollout, the decoder that follows its videos in chunk order, and the result."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from harness.engine.ledger import CountingModel, Ledger
from harness.engine.noise import NoiseSource
from harness.engine.samplers import Sampler
from harness.models.base import Cond, KVCache

if TYPE_CHECKING:
    from harness.verifiers.base import Verifier


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
