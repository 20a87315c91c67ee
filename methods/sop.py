"""`sop`: Search-over-Path per chunk (AutoRefiner Sec. 4.2, after Ma et al. 2025).

Like Best-of-N, each chunk starts from N candidate initial noises per video, but the verifier picks
after EVERY denoising step: the best clean prediction per video is renoised with N candidate path
noises into the next step's candidates. Per chunk that is N verifier calls and N decodes per step;
the last step's winner keeps its decoded frames (ΔVAE 19 for 4 steps and N = 5).

Candidate 0 always follows the sampler's own path (the base draw, or the ODE's implied noise), so
with n = 1 `sop` is `base`, bit for bit, with the same compute.
"""
from __future__ import annotations

import torch

from harness.engine.context import Context
from harness.engine.samplers import sampler_path_noise
from methods.bon import BestOfN


class SearchOverPath(BestOfN):
    name = "sop"
    description = "Search-over-Path: N noises per step, the verifier's best clean prediction goes on"
    cost = {"candidates": "n", "verify": "every"}

    def select(self, x0: torch.Tensor, ctx: Context) -> torch.Tensor | None:
        return self.best(x0, ctx) if self.params.n > 1 else None

    def path_noise(self, x: torch.Tensor, x0: torch.Tensor, ctx: Context) -> torch.Tensor:
        eps = ctx.noise.path(ctx.chunk, ctx.step, candidates=self.params.n)
        eps[:: self.params.n] = sampler_path_noise(x, x0, ctx)
        return eps
