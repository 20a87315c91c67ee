"""What one rollout of a method spends, per video, in the ledger's units (harness.engine.ledger), read
from the method's declaration before anything runs; torch-free, so `refinery plan` answers without it.

A method declares its cost beside the hooks that spend it, as a literal dict class attribute `cost`
(harness.engine.method.Method; read from the source like `description`, without importing the
method). This module turns a declaration, the method's parameters and the sampler's steps and the
model's chunks into the counts the ledger would record. Where the ledger counts:

- `CountingModel.denoise`: one NFE per model row; `commit`: one cache pass per row, every chunk but
  the last (nothing attends to it); `decode`/`decode_next`: one per latent chunk per row;
- `Context.verify`: one verifier call per candidate row;
- `NoiseRefiner.__call__`: one refiner call, also one NFE (the paper's units), plus one cache pass
  for the previous step's output where the refiner reads it; `NoiseRefiner.commit`: one cache pass
  per chunk where the refiner keeps its own history.

Declaration keys (all optional; `{}` is `base`):
  branches          model rows per candidate at every denoise and commit (CFG: 2)
  candidates        the parameter holding the candidate rows per video (BoN, SoP: "n")
  verify            "last" | "every": candidates decoded and verified at the last step, or at every
                    step (the winner's frames are kept, so the video is not decoded again)
  skipped_steps     the parameter holding how many first steps call no model (CFG-Zero*'s zero-init)
  extra_iterations  "schedule": extra denoise iterations per step from the parameters `iterations`,
                    `fraction` and `plan` (`step_schedule`; P&P; an upper bound, rows stop early)
  refiner           "initial" (one call per chunk) | "intermediate" (one per refined intermediate
                    step: the parameter `timesteps`, else every intermediate step)
  refiner_history   the switch parameter (null: on) of the refiner's own history cache
  refiner_previous  the switch parameter (null: on) of the refiner's read of the previous output
The test tests/test_planner.py checks every registered method's declaration against the ledger.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from harness.errors import UsageError

KEYS = ("branches", "candidates", "verify", "skipped_steps", "extra_iterations", "refiner", "refiner_history",
        "refiner_previous")


@dataclass(frozen=True)
class RolloutCost:
    """Per video, one rollout: the ledger's counters (refiner calls included in nfe)."""

    nfe: int = 0
    cache_passes: int = 0
    refiner_calls: int = 0
    verifier_calls: int = 0
    decodes: int = 0
    rows: int = 1  # model rows one video takes in a batch (what its memory scales with)
    upper_bound: bool = False  # the method may stop early (P&P): the counts are at most these

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def model_passes(self) -> int:
        """Forwards of the denoiser network (NFE and cache passes): what the time goes into."""
        return self.nfe + self.cache_passes


def step_schedule(steps: int, iterations: int, fraction: float, plan: Any) -> list[int]:
    """Extra iterations at each of `steps` steps: `iterations` on the first `fraction` of the steps
    (at least one step for any fraction > 0), or, when `plan` is given, its [start, end, iterations]
    entries over inclusive step ranges, later entries winning, entries of 0 skipped."""
    if plan is None:
        refined = math.ceil(round(fraction * steps, 9))  # round: 0.3 * 10 must not give 4 steps
        return [iterations if i < refined else 0 for i in range(steps)]
    extra = [0] * steps
    for start, end, count in plan:
        if not count:
            continue
        if end >= steps:
            raise UsageError(f"method.params.plan entry {[start, end, count]} reaches step {end}, "
                             f"but the sampler has steps 0..{steps - 1}; shorten the entry")
        extra[start:end + 1] = [count] * (end + 1 - start)
    return extra


def _switch(params: dict[str, Any], name: str | None) -> bool:
    return bool(name) and params.get(name) is not False


def rollout_cost(declared: dict[str, Any], params: dict[str, Any], steps: int, chunks: int) -> RolloutCost:
    """The counts one video's rollout records (module docstring)."""
    unknown = sorted(set(declared) - set(KEYS))
    if unknown:
        raise UsageError(f"a method's cost declares {unknown}, not among {list(KEYS)}; fix the method's `cost`")
    branches = int(declared.get("branches", 1))
    candidates = int(params[declared["candidates"]]) if "candidates" in declared else 1
    rows = candidates * branches
    skipped = int(params[declared["skipped_steps"]]) if "skipped_steps" in declared else 0
    extra = 0
    if declared.get("extra_iterations") == "schedule":
        extra = sum(step_schedule(steps, int(params["iterations"]), float(params["fraction"]), params.get("plan")))
    verify = declared.get("verify") if candidates > 1 else None
    verified_steps = {"last": 1, "every": steps}.get(verify, 0)
    refiner = declared.get("refiner")
    timesteps = params.get("timesteps")
    refined = {"initial": 1, "intermediate": len(timesteps) if timesteps else steps - 1}.get(refiner, 0)
    previous = refined if refiner == "intermediate" and _switch(params, declared.get("refiner_previous")) else 0
    history = 1 if refiner and _switch(params, declared.get("refiner_history")) else 0
    per_chunk_nfe = rows * (steps - skipped + extra) + refined
    return RolloutCost(
        nfe=chunks * per_chunk_nfe,
        cache_passes=(chunks - 1) * (branches + history) + chunks * previous,
        refiner_calls=chunks * refined,
        verifier_calls=chunks * candidates * verified_steps,
        decodes=chunks * (candidates * verified_steps if verified_steps else 1),
        rows=rows,
        upper_bound=extra > 0)
