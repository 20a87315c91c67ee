"""Lazy registries of models, methods, metrics, verifiers, samplers and training objectives.

Entries are "module:attr" strings resolved on first use, so importing the harness never imports a
backend or a metric library it does not use. An unknown name is a UsageError with the closest names.

Plug-ins add entries from outside the repository, as lm-evaluation-harness does:
- an installed package declares entry points in a group per registry (`refinery.methods`,
  `refinery.metrics`, `refinery.models`, `refinery.verifiers`, `refinery.samplers`,
  `refinery.objectives`), name -> "module:attr", read the first time a registry is asked for a name
  it lacks or for its names; its Hydra configs come with an entry point in `refinery.configs`
  naming the package that holds them (harness.plugins);
- a folder given in config (`plugins=[DIR]`): its Python files are imported and register what they
  define (`METHODS.register("my_method", MyMethod)`), its `configs/` folder joins Hydra's search path.
`origin(name)` says where an entry came from; a plug-in may not replace an entry that exists.
"""
from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any

from harness.errors import UsageError, unknown_name

BUILTIN = "refinery"


class Registry:
    def __init__(self, kind: str, entries: dict[str, str], group: str):
        self.kind = kind
        self.group = group  # the entry-point group of plug-in packages
        self._entries: dict[str, Any] = dict(entries)
        self._origins = {name: BUILTIN for name in entries}
        self._entry_points_read = False

    def register(self, name: str, target: Any, origin: str | None = None) -> None:
        """Add an entry: a "module:attr" string or the object itself, e.g.
        METHODS.register("my_method", "my_pkg.my_method:MyMethod")."""
        from harness.plugins import current_origin

        origin = origin or current_origin()
        if name in self._entries and self._origins[name] != origin:
            raise UsageError(f"{origin} registers {self.kind} {name!r}, which {self._origins[name]} already "
                             f"provides; rename one of them")
        self._entries[name] = target
        self._origins[name] = origin

    def _read_entry_points(self) -> None:
        if self._entry_points_read:
            return
        self._entry_points_read = True
        for point in metadata.entry_points(group=self.group):
            dist = point.dist.name if point.dist is not None else "an installed package"
            self.register(point.name, point.value, origin=f"package {dist} (entry point {self.group})")

    def names(self) -> list[str]:
        self._read_entry_points()
        return sorted(self._entries)

    def origin(self, name: str) -> str:
        self.target(name)
        return self._origins[name]

    def target(self, name: str) -> Any:
        if name not in self._entries:
            self._read_entry_points()
        if name not in self._entries:
            raise unknown_name(self.kind, name, self._entries)
        return self._entries[name]

    def get(self, name: str) -> Any:
        target = self.target(name)
        if not isinstance(target, str):
            return target
        module, _, attr = target.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            if self._origins[name] == BUILTIN:
                raise
            raise UsageError(f"{self.kind} {name!r} from {self._origins[name]} points at {target!r}, which does not "
                             f"import ({type(exc).__name__}: {exc}); fix the plug-in or uninstall it") from None


MODELS = Registry("model backend", {  # model configs (sweeps/model/) name their backend
    "toy": "harness.models.loader:TOY",
    "wan_causal": "harness.models.loader:WAN_CAUSAL",
}, group="refinery.models")
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
}, group="refinery.methods")
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
}, group="refinery.metrics")
VERIFIERS = Registry("verifier", {
    "world_reward": "harness.verifiers.world_reward:WorldReward",
    "clip_score": "harness.verifiers.clip_score:ClipScore",
    "hpsv2": "harness.verifiers.hpsv2:HpsV2",
    "internvideo2": "harness.verifiers.video_reward:InternVideo2",
}, group="refinery.verifiers")
SAMPLERS = Registry("sampler", {  # sampler.kind: the path-noise rule (harness.samplers)
    "stochastic": "harness.samplers:STOCHASTIC",
    "ode": "harness.samplers:ODE",
}, group="refinery.samplers")
OBJECTIVES = Registry("objective", {  # what `refinery train` optimises (harness.train.objectives)
    "reward": "harness.train.objectives:RewardObjective",
    "dmd": "harness.train.objectives:DmdObjective",
}, group="refinery.objectives")
