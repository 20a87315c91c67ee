"""Lazy registries of models, methods, metrics, verifiers, samplers and training objectives.

Entries are "module:attr" strings resolved on first use, so importing the harness never imports a
backend or a metric library it does not use. An unknown name is a UsageError with the closest names.

Plug-ins add entries from outside the repository, as lm-evaluation-harness does:
- an installed package declares entry points in a group per registry (`refinery.methods`,
  `refinery.metrics`, `refinery.models`, `refinery.verifiers`, `refinery.samplers`,
  `refinery.objectives`), name -> "module:attr", read the first time a registry is asked for a name
  it lacks or for its names; its Hydra configs come with an entry point in `refinery.configs`
  naming the package that holds them (harness.experiment.plugins);
- a folder given in config (`plugins=[DIR]`): its Python files are imported and register what they
  define (`METHODS.register("my_method", MyMethod)`), its `configs/` folder joins Hydra's search path.
`origin(name)` says where an entry came from; a plug-in may not replace an entry that exists.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.errors import UsageError, unknown_name

BUILTIN = "refinery"
_origin: list[str] = []  # the include files being imported, innermost last (harness.experiment.plugins)


def current_origin() -> str:
    """Where an entry being registered now comes from: the include file being imported, or code."""
    return _origin[-1] if _origin else "code"


@contextmanager
def registering_from(origin: str) -> Iterator[None]:
    _origin.append(origin)
    try:
        yield
    finally:
        _origin.pop()


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

    def describe(self, name: str) -> str:
        """An entry's `description`, read from its source without importing it where it is a
        "module:attr" string not yet imported (so `refinery list` loads no backend, torch included)."""
        target = self.target(name)
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            if module not in sys.modules:
                found = _static_description(module, attr)
                if found is not None:
                    return found
        return str(getattr(self.get(name), "description", ""))

    def declared(self, name: str, attribute: str) -> Any:
        """A class attribute of an entry that the source states as a literal (a method's `cost`), read
        without importing the entry where it is a "module:attr" string not yet imported, so that
        `refinery plan` needs no torch; otherwise the imported entry's attribute."""
        target = self.target(name)
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            if module not in sys.modules:
                found = _static_attribute(module, attr, attribute)
                if found is not _UNSAID:
                    return found
        return getattr(self.get(name), attribute)

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



def _class_node(module: str, attr: str) -> ast.ClassDef | None:
    """The class `attr` as the source of `module` defines it; None where there is no such source."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    tree = ast.parse(Path(spec.origin).read_text())
    return next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == attr), None)


def _assigned(node: ast.ClassDef, name: str) -> ast.expr | None:
    """The value the class body assigns to `name` (plain or annotated), if it does."""
    for item in node.body:
        target = item.target if isinstance(item, ast.AnnAssign) else (
            item.targets[0] if isinstance(item, ast.Assign) and len(item.targets) == 1 else None)
        if isinstance(target, ast.Name) and target.id == name and item.value is not None:
            return item.value
    return None


def _static_description(module: str, attr: str) -> str | None:
    """The string a class assigns to `description` in the module's source, or its docstring's first
    line; None when the source does not say (an instance, a computed value): then the entry is imported."""
    node = _class_node(module, attr)
    if node is None:
        return None
    value = _assigned(node, "description")
    if isinstance(value, ast.Constant):
        return str(value.value)
    doc = ast.get_docstring(node)
    return doc.strip().splitlines()[0] if doc else ""


_UNSAID = object()  # the source does not say: import the entry


def _static_attribute(module: str, attr: str, name: str) -> Any:
    """The literal a class assigns to `name` in its source, or that the first base class saying it
    assigns (bases found in the module or imported by name into it); _UNSAID otherwise."""
    node = _class_node(module, attr)
    if node is None:
        return _UNSAID
    value = _assigned(node, name)
    if value is not None:
        try:
            return ast.literal_eval(value)
        except ValueError:
            return _UNSAID
    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
    imported = {alias.asname or alias.name: (importlib.util.resolve_name("." * item.level + (item.module or ""),
                                                                         module.rpartition(".")[0]) if item.level
                                             else item.module, alias.name)
                for item in tree.body if isinstance(item, ast.ImportFrom) for alias in item.names}
    for base in node.bases:
        if not isinstance(base, ast.Name):
            continue
        where = (module, base.id) if base.id not in imported else imported[base.id]
        found = _static_attribute(*where, name)
        if found is not _UNSAID:
            return found
    return _UNSAID


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
SAMPLERS = Registry("sampler.kind", {  # sampler.kind: the path-noise rule (harness.engine.samplers)
    "stochastic": "harness.engine.samplers:STOCHASTIC",
    "ode": "harness.engine.samplers:ODE",
}, group="refinery.samplers")
OBJECTIVES = Registry("objective", {  # what `refinery train` optimises (harness.train.objectives)
    "reward": "harness.train.objectives:RewardObjective",
    "dmd": "harness.train.objectives:DmdObjective",
}, group="refinery.objectives")
