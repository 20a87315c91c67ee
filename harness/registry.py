"""Lazy registries of models, methods, metrics, verifiers and training objectives.

Entries are "module:attr" strings resolved on first use, so importing the harness never imports a
backend or a metric library it does not use. An unknown name is a UsageError with the closest names.
"""
from __future__ import annotations

import importlib
from typing import Any

from harness.errors import unknown_name


class Registry:
    def __init__(self, kind: str, entries: dict[str, str]):
        self.kind = kind
        self._entries = dict(entries)

    def register(self, name: str, target: str) -> None:
        """Add an entry, e.g. register("my_method", "my_pkg.my_method:MyMethod")."""
        self._entries[name] = target

    def names(self) -> list[str]:
        return sorted(self._entries)

    def target(self, name: str) -> str:
        if name not in self._entries:
            raise unknown_name(self.kind, name, self._entries)
        return self._entries[name]

    def get(self, name: str) -> Any:
        module, attr = self.target(name).split(":")
        return getattr(importlib.import_module(module), attr)


MODELS = Registry("model backend", {  # model configs (sweeps/model/) name their backend
    "toy": "harness.models.loader:TOY",
    "wan_causal": "harness.models.loader:WAN_CAUSAL",
})
METHODS = Registry("method", {
    "base": "methods.base:Base",
    "bon": "methods.bon:BestOfN",
    "sop": "methods.sop:SearchOverPath",
    "pnp": "methods.pnp:PredictAndPerturb",
    "cfg": "methods.cfg:ClassifierFreeGuidance",
    "cfg_zero": "methods.cfg:CfgZeroStar",
    "lora": "methods.lora:Lora",
    "init_noise_refiner": "methods.init_noise_refiner:InitNoiseRefiner",
    "autorefiner": "methods.autorefiner:AutoRefiner",
})
METRICS = Registry("metric", {
    "dynamics": "metrics.dynamics:Dynamics",
    "perceptual_dynamics": "metrics.perceptual_dynamics:PerceptualDynamics",
    "dino_diversity": "metrics.diversity:Diversity",
    "temporal_flicker": "metrics.temporal_flicker:TemporalFlicker",
    "world_alignment": "metrics.world_alignment:WorldAlignment",
    "world_bench": "metrics.world_bench:WorldBench",
    "compute": "metrics.compute:Compute",
    "clip_score": "metrics.clip_score:ClipScoreMetric",
    "reward": "metrics.reward:Reward",
})
VERIFIERS = Registry("verifier", {
    "world_reward": "harness.verifiers.world_reward:WorldReward",
    "clip_score": "harness.verifiers.clip_score:ClipScore",
    "hpsv2": "harness.verifiers.hpsv2:HpsV2",
    "internvideo2": "harness.verifiers.video_reward:InternVideo2",
})
SAMPLERS = Registry("sampler", {  # sampler.kind: the path-noise rule (harness.samplers)
    "stochastic": "harness.samplers:STOCHASTIC",
    "ode": "harness.samplers:ODE",
})
OBJECTIVES = Registry("objective", {  # what `refinery train` optimises (harness.train.objectives)
    "reward": "harness.train.objectives:RewardObjective",
    "dmd": "harness.train.objectives:DmdObjective",
})
