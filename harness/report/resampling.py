"""How a report resamples: bootstrap draws, permutations, seed and CI level, as config data.

Apart from the statistics (stats.py) so that validating a config does not import numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.engine.schema import option


@dataclass(frozen=True)
class Resampling:
    draws: int = option(2000, min=1)  # bootstrap draws (prompts resampled with replacement)
    permutations: int = option(9999, min=1)  # sign-flip permutations of the paired test (exact when 2^prompts is fewer)
    seed: int = option(0, min=0)
    level: float = option(0.95, above=0, below=1)  # of the confidence intervals

    @property
    def alpha(self) -> float:
        return 1 - self.level

    def describe(self) -> str:
        """The one line a report prints about its statistics."""
        pct = f"{self.level:.0%}"
        return (f"{pct} CIs: percentile bootstrap with {self.draws} draws, resampling prompts with "
                f"replacement (each drawn prompt keeps all its seeds); Δ: paired by (prompt, seed), same "
                f"bootstrap; p: sign-flip permutation test over prompts ({self.permutations} permutations, "
                f"exact when fewer sign patterns exist), Holm-corrected across the methods of each table; "
                f"seed {self.seed}.")
