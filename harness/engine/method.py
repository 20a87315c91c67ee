"""The base class of sampling methods: the rollout loop's hook points, each defaulting to `base`.

A method overrides only the hooks it changes, declares its parameters as a validated dataclass and
what it needs of the model; `check` refuses an impossible combination before any compute.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from harness.errors import UsageError
from harness.models.base import ModelSpec, VideoModel
from harness.engine.context import Context
from harness.engine.samplers import Sampler, sampler_path_noise
from harness.engine.schema import check


@dataclass(frozen=True)
class NoParams:
    pass


def build_params(Params: type, params: dict[str, Any], where: str) -> Any:
    """A plug-in's typed parameters (harness.engine.schema: types, bounds, unknown names), or a one-line
    UsageError naming the key under `where` and the fix."""
    return check(Params, params, where)


class Method:
    name: ClassVar[str]
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    needs_uncond: ClassVar[bool] = False
    # What a rollout spends per video beyond `base`, as a literal (harness.engine.cost: its keys, and
    # how `refinery plan` reads it without importing the method); the ledger's counts must equal it.
    cost: ClassVar[dict[str, Any]] = {}

    def __init__(self, **params: Any):
        self.params = build_params(self.Params, params, "method.params")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "params": asdict(self.params)}

    def rows_per_video(self) -> int:
        """Rows of the model's batch one video takes (search candidates, guidance branches): what a
        rollout batch's memory scales with."""
        return 1

    def prepare(self, spec: ModelSpec, sampler: Sampler, weights_dir: Path) -> None:
        """Before any compute: refuse, with a one-line UsageError, a model or sampler this method
        cannot run with, and load what it needs (verifiers, trained weights) from `weights_dir`."""
        if self.needs_uncond and not spec.has_uncond:
            raise UsageError(f"method {self.name!r} needs an unconditional branch, which model "
                             f"{spec.name!r} does not have; choose another method or model")

    def bind(self, model: VideoModel, training: bool = False) -> VideoModel:
        """The model this method samples with (`training`: the model a training rollout
        differentiates), called by the rollout before any model call. Trained methods refuse a
        checkpoint trained for other weights here (UsageError) and return the model with their
        adapters, so that the KV cache and the ledger see the weights that sample."""
        return model

    # -- hooks ---------------------------------------------------------------------------------
    def begin(self, ctx: Context) -> None:
        """Called once per rollout, before the first chunk."""

    def initial_noise(self, ctx: Context) -> torch.Tensor:
        return ctx.noise.initial(ctx.chunk)

    def denoise(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        return ctx.model.denoise(x, ctx.sigma, ctx.cond, ctx.cache)

    def select(self, x0: torch.Tensor, ctx: Context) -> torch.Tensor | None:
        """Which rows of x0 go on (indices, one per video), or None to keep them all."""
        return None

    def path_noise(self, x: torch.Tensor, x0: torch.Tensor, ctx: Context) -> torch.Tensor:
        """The noise that renoises x0 to the next level; k rows per row of x0 make k candidates."""
        return sampler_path_noise(x, x0, ctx)

    def commit(self, x0: torch.Tensor, ctx: Context) -> None:
        """Fill the cache with the finished chunk (methods with a second cache also fill theirs)."""
        ctx.model.commit(x0, ctx.cond, ctx.cache)
