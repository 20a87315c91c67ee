"""`bon`: Best-of-N per chunk (AutoRefiner Sec. 4.2, after Ma et al. 2025's random search).

Each chunk starts from N candidate initial noises per video; the candidates are one batch through
every denoising step (each with its own keyed path noise), then the N clean chunks are decoded,
scored by a verifier, and the best one per video is committed. Its decoded frames are kept for the
final video, so the extra decodes per chunk are N - 1 (ΔVAE 4 for N = 5).

Candidate 0 is the base method's noise, so with n = 1 there is nothing to choose and `bon` is `base`,
bit for bit, with the same compute.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.engine.method import Method
from harness.models.base import ModelSpec
from harness.engine.registry import VERIFIERS
from harness.engine.context import Context
from harness.engine.samplers import Sampler
from harness.engine.schema import option
from harness.verifiers.base import Verifier


@dataclass(frozen=True)
class SearchParams:
    n: int = option(5, min=1)  # candidates per video
    verifier: str = "world_reward"  # a harness.engine.registry.VERIFIERS name


class BestOfN(Method):
    name = "bon"
    description = "Best-of-N: N initial noises per chunk, the verifier's best clean chunk is committed"
    Params = SearchParams
    cost = {"candidates": "n", "verify": "last"}

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.verifier: Verifier | None = None  # set by prepare (tests may put a recording verifier here)
        self.verifier_digest: str | None = None

    def rows_per_video(self) -> int:
        return self.params.n

    def prepare(self, spec: ModelSpec, sampler: Sampler, weights_dir: Path) -> None:
        super().prepare(spec, sampler, weights_dir)
        self.verifier = VERIFIERS.get(self.params.verifier)(weights_dir)
        self.verifier_digest = self.verifier.digest()

    def describe(self) -> dict[str, Any]:
        """The verifier's weights decide which candidates win, so they are part of the results' key."""
        return {**super().describe(), "verifier": {"name": self.params.verifier, "digest": self.verifier_digest}}

    def initial_noise(self, ctx: Context) -> torch.Tensor:
        return ctx.noise.initial(ctx.chunk, candidates=self.params.n)

    def select(self, x0: torch.Tensor, ctx: Context) -> torch.Tensor | None:
        return self.best(x0, ctx) if ctx.is_last_step and self.params.n > 1 else None

    def best(self, x0: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Decode and verify every candidate's clean chunk; the rows of each video's best candidate.
        At the last step the winners' frames are kept, so the final video does not decode them again."""
        n = self.params.n
        frames = ctx.decode_candidates(x0)
        scores = ctx.verify(self.verifier, frames, list(ctx.cond.repeat(n).prompts))
        keep = scores.view(-1, n).argmax(1).to(x0.device) + torch.arange(0, x0.shape[0], n, device=x0.device)
        if ctx.is_last_step:
            ctx.keep_decoded(keep)
        return keep
