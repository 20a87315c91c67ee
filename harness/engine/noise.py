"""The explicit noise source: every Gaussian draw of a rollout is keyed by
(video seed, stream, chunk, step, candidate).

Keys make runs reproducible across processes and batch layouts, and make comparisons paired: every
method draws the same base noise for the same seed (candidate 0 is the base draw), so a refiner
transforms exactly the noise the base method would have used.
"""
from __future__ import annotations

import hashlib

import torch


def key_seed(*key: object) -> int:
    """A 63-bit generator seed from a key; stable across processes and Python versions."""
    digest = hashlib.blake2b("/".join(map(str, key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class NoiseSource:
    def __init__(self, seeds: list[int], chunk_shape: tuple[int, ...], device: torch.device | str = "cpu"):
        """seeds: one per video of the batch; chunk_shape: (F, C, H, W) of one latent chunk. Draws are
        made on the CPU (the same numbers on every device) and moved to `device`."""
        self.seeds = list(seeds)
        self.chunk_shape = tuple(chunk_shape)
        self.device = torch.device(device)

    def draw(self, stream: str, chunk: int, step: int, candidates: int = 1) -> torch.Tensor:
        """(B * candidates, *chunk_shape), the candidates of one video adjacent."""
        out = torch.empty(len(self.seeds) * candidates, *self.chunk_shape)
        gen = torch.Generator()
        for b, seed in enumerate(self.seeds):
            for c in range(candidates):
                gen.manual_seed(key_seed(seed, stream, chunk, step, c))
                torch.randn(self.chunk_shape, generator=gen, out=out[b * candidates + c])
        return out.to(self.device)

    def initial(self, chunk: int, candidates: int = 1) -> torch.Tensor:
        return self.draw("initial", chunk, 0, candidates)

    def path(self, chunk: int, step: int, candidates: int = 1) -> torch.Tensor:
        """The fresh noise that renoises step `step`'s x0 to the next noise level."""
        return self.draw("path", chunk, step, candidates)
