"""The experiment layer: Hydra overrides -> composed configs -> the cell plans of a sweep.

An experiment (sweeps/experiment/<name>.yaml plus the command line's overrides) expands into
`CellPlan`s, each a point of the sweep with its composed config and its row labels, without loading
a model. A plan's cell key is the hash of its resolved run spec, which needs the model's weights
digest and the method's checkpoints; so when a cell is generated its key is recorded in the store
under the plan's fingerprint (the config settings that make the spec, the method's version, the
suite's prompts and the size and mtime of every weight file the run reads), and `score`, `report`,
`verify`, `leaderboard` and `bench` read keys from there. Only a plan the store has never seen, or
whose weight files changed since, is resolved again (which loads its model).

Hydra composes through its public API (`hydra.compose`); sweeps are expanded as Hydra's basic
sweeper expands them (cartesian product of the sweep overrides, a later setting of a key wins),
with the override parser's public `sweep_string_iterator`.
"""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.assets import CONFIG_DIR
from harness.errors import UsageError, unknown_name
from harness.store.files import atomic_write_json, canonical_json, read_json
from harness.store.lease import remove_stale_temp_files

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from harness.experiment.pipeline import Run
    from harness.store.cells import Store
    from harness.store.cells import CellRef

GROUPS = ("model", "sampler", "method", "suite", "metric", "experiment")
# Settings of the root config that change a video's bits: what a plan's fingerprint covers.
_SPEC_SETTINGS = ("model", "sampler", "method", "suite", "seed", "samples_per_prompt", "batch_size", "threads")
_PLANS = ".plans"  # the store's folder of recorded plan -> cell key entries


# ---------------------------------------------------------------------------------------------
# composition


def plugin_folders(overrides: list[str]) -> list[Path]:
    """Include folders of plug-ins: `plugins=[DIR, ...]` on the command line, then REFINERY_PLUGINS."""
    from harness.experiment.plugins import folders_from

    named = [o for o in overrides if o.lstrip("+~").partition("=")[0] == "plugins"]
    given = [o for o in _parse(named, check=False)] if named else []  # no parser (antlr) when none
    values = given[-1].value() if given else []
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise UsageError(f"plugins={given[-1].get_value_element_as_str()} is not a list of folders; "
                         "give plugins=[DIR,...]")
    return folders_from(values)


def _search_path(overrides: list[str]) -> list[str]:
    from harness.experiment.plugins import search_path

    return search_path(plugin_folders(overrides))


def searchpath_overrides(overrides: list[str]) -> list[str]:
    """The Hydra override that puts the plug-ins' configs on the search path (none without plug-ins);
    loading the include folders registers their entries in this process."""
    searched = _search_path(overrides)
    return [f"hydra.searchpath=[{','.join(searched)}]"] if searched else []


def load_plugins(cfg: DictConfig) -> None:
    """Register the plug-ins a composed config names, e.g. in a sweep job another process runs."""
    from harness.experiment.plugins import folders_from, load_folder

    for folder in folders_from(list(cfg.get("plugins") or [])):
        load_folder(folder)


def load_plugin_folders(overrides: list[str]) -> None:
    """Import the include folders the command line names (`plugins=[...]`, REFINERY_PLUGINS), whose
    files register their entries, without composing a config."""
    _search_path(overrides)


def config_dirs(overrides: list[str] | None = None) -> list[Path]:
    """sweeps/ and the config folders of every plug-in, in Hydra's search order."""
    from harness.experiment.plugins import config_dirs as plugin_dirs

    return [CONFIG_DIR, *plugin_dirs(_search_path(overrides or []))]


def group_configs(group: str, overrides: list[str] | None = None) -> dict[str, Path]:
    """Option -> its yaml file, for every option of a config group: sweeps/ first, then plug-ins'
    config folders (Hydra's search order, so the first file of a name is the one Hydra reads)."""
    found: dict[str, Path] = {}
    for folder in config_dirs(overrides):
        for path in sorted((folder / group).glob("*.yaml")):
            found.setdefault(path.stem, path)
    return dict(sorted(found.items()))


def group_choices(group: str, overrides: list[str] | None = None) -> list[str]:
    """The options of a config group."""
    return list(group_configs(group, overrides))


def _check_group_choices(overrides: list[str]) -> None:
    """Unknown config-group options get a did-you-mean line instead of Hydra's traceback."""
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key not in GROUPS or not value or value == "null":
            continue
        known = group_choices(key, overrides)
        for choice in value.split(","):
            if choice not in known:
                raise unknown_name(key, choice, known)


def _setting(override: str) -> tuple[str, str]:
    """(key, value) of an override, the key without Hydra's +, ++ or ~."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def refuse_repeated(overrides: list[str]) -> None:
    """A key given twice with two values is refused: Hydra would keep the last one silently
    (`method=bon method=sop` runs sop). The same setting twice changes nothing and passes."""
    seen: dict[str, str] = {}
    for override in overrides:
        key, _ = _setting(override)
        if key in seen and seen[key] != override:
            raise UsageError(f"{key} is given twice ({seen[key]}, then {override}); give each key once "
                             f"(to sweep it, list its values in one override: {key}=a,b)")
        seen.setdefault(key, override)


def compose(overrides: list[str], with_hydra: bool = False) -> DictConfig:
    """The root config (sweeps/config.yaml) with the overrides, plug-ins' configs on the search path."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from harness.experiment.config_schema import override_error

    import yaml

    refuse_repeated(overrides)
    _check_group_choices(overrides)
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base=None, job_name="refinery"):
            return hydra_compose("config", overrides=[*overrides, *searchpath_overrides(overrides)],
                                 return_hydra_config=with_hydra)
    except (HydraException, OmegaConfBaseException) as exc:
        raise override_error(exc, overrides, compose) from None
    except yaml.YAMLError as exc:  # Hydra reads configs with a safe loader, which refuses a tag
        raise yaml_refused(exc) from None


def yaml_refused(exc: Exception, path: Path | None = None) -> UsageError:
    """A config file that a safe YAML loader refuses (a `!!python/...` tag, which is never run, or a
    syntax error) as one line naming the file and line."""
    mark = getattr(exc, "problem_mark", None)
    where = str(path or (mark.name if mark else "a config file")) + (f", line {mark.line + 1}," if mark else "")
    problem = getattr(exc, "problem", None) or type(exc).__name__
    return UsageError(f"config file {where} is not plain YAML ({problem}); configs are data, read with a safe "
                      "loader: remove the tag (e.g. !!python/...) or fix the syntax")


def _parse(overrides: list[str], check: bool = True) -> list:
    if check:  # before importing Hydra: an unknown option is refused at once
        refuse_repeated(overrides)
        _check_group_choices(overrides)
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from harness.experiment.config_schema import override_error

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise override_error(exc, overrides, compose) from None


def fixed_overrides(overrides: list[str]) -> list[str]:
    """The overrides that are not sweeps (`a=1`, not `a=1,2`)."""
    return [o.input_line for o in _parse(overrides) if not o.is_sweep_override()]


def expand(overrides: list[str]) -> list[list[str]]:
    """Every point of a sweep, as Hydra's basic sweeper makes them: the experiment's sweeper params
    and the command line's sweeps (which win over the experiment's sweep of the same key), as a
    cartesian product in the order given (a key the command line sets twice is refused)."""
    given = _parse(overrides)
    # the experiment's sweep: composed from the group choices alone, since a setting such as
    # method.params.n=2 may only exist under the swept options (method=bon,sop)
    choices = [o for o in fixed_overrides(overrides) if o.lstrip("+~").partition("=")[0] in (*GROUPS, "plugins")
               or "/" in o.partition("=")[0]]
    from omegaconf import OmegaConf

    params = compose(choices, with_hydra=True).hydra.sweeper.params
    params = OmegaConf.to_container(params) if params else {}
    keys = {o.get_key_element() for o in given}
    parsed = _parse([f"{k}={v}" for k, v in params.items() if k not in keys] + overrides)
    values: dict[str, list[str]] = {}  # key -> its points, in the order the keys come
    for o in parsed:
        key = o.get_key_element()
        if not o.is_sweep_override():
            values[key] = [f"{key}={o.get_value_element_as_str()}"]
        elif o.is_discrete_sweep():
            values[key] = [f"{key}={value}" for value in o.sweep_string_iterator()]
        else:
            raise UsageError(f"{o.input_line}: a {o.value_type.name.lower()} sweep has no finite list of points; "
                             f"list the values, e.g. {key}=1,2,4")
    return [list(point) for point in itertools.product(*values.values())]


# ---------------------------------------------------------------------------------------------
# cell plans


@dataclass
class CellPlan:
    """One cell of an experiment: its overrides, composed config and row labels; no model loaded."""

    overrides: list[str]
    cfg: DictConfig
    labels: dict[str, str] = field(default_factory=dict)

    def fingerprint(self) -> dict[str, Any]:
        """What makes this plan's run spec, read without building a model (module docstring)."""
        from harness import __version__
        from harness.engine.registry import METHODS
        from harness.experiment.suites import read_suite
        from harness.experiment.needed import needed_files
        from omegaconf import OmegaConf

        from harness.experiment.spec_form import SPEC_FORM

        cfg = self.cfg
        files = [f.path for f in needed_files(cfg) if not f.owner.startswith("metric ")]
        return {"refinery": __version__, "spec_form": SPEC_FORM,
                "settings": {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k])
                             else cfg[k] for k in _SPEC_SETTINGS},
                "weights_dir": str(Path(cfg.paths.weights).resolve()),
                "method_version": METHODS.get(cfg.method.name).version,
                "prompts": read_suite(cfg.suite).prompts,
                "files": [_file_state(p) for p in files]}

    def plan_id(self) -> str:
        return hashlib.sha256(canonical_json(self.fingerprint()).encode()).hexdigest()[:24]

    def key(self, store: Store) -> str:
        """The cell key: as recorded in the store when the cell was made, else resolved (read-only
        commands record nothing; the next run or sweep of the plan records it)."""
        entry = store.root / _PLANS / f"{self.plan_id()}.json"
        if entry.is_file():
            return str(read_json(entry, fix=f"delete {entry}; the next command records it again")["key"])
        from harness.experiment.pipeline import resolve_run

        return resolve_run(self.cfg).key


def _file_state(path: Path) -> list:
    try:
        stat = path.stat()
    except OSError:
        return [str(path), None, None]
    return [str(path), stat.st_size, stat.st_mtime_ns]


def record(plan: CellPlan, run: Run, store: Store) -> None:
    """Note in the store that this plan's cell key is run.key (a writer resolved it just now, so it
    replaces what an older version of the code recorded)."""
    entry = store.root / _PLANS / f"{plan.plan_id()}.json"
    remove_stale_temp_files(entry.parent)  # of a writer killed mid-write
    if not entry.is_file() or read_json(entry).get("key") != run.key:
        atomic_write_json(entry, {"key": run.key, "overrides": plan.overrides})


def label_points(points: list[list[str]], cfgs: list[DictConfig]) -> list[dict[str, str]]:
    """The settings that vary across a sweep's cells label its rows; a single cell is labelled by
    its method (the method option chosen, e.g. base_2x_steps, else the method's name)."""
    parsed = [dict(o.partition("=")[::2] for o in point) for point in points]
    varying = [k for k in parsed[0] if len({p.get(k) for p in parsed}) > 1]
    return [{k: p[k] for k in varying} or {"method": p.get("method", cfg.method.name)}
            for p, cfg in zip(parsed, cfgs)]


@dataclass
class Experiment:
    """An experiment with the command line's overrides: its cells and its report settings."""

    overrides: list[str]
    plans: list[CellPlan]

    @property
    def cfg(self) -> DictConfig:
        return self.plans[0].cfg

    @property
    def name(self) -> str:
        return self.cfg.experiment or "adhoc"

    @property
    def store(self) -> Store:
        from harness.store.cells import Store

        return Store(Path(self.cfg.paths.store))

    def baseline_plan(self) -> CellPlan | None:
        """The cell Δ, overheads and timings are measured against: the command line's fixed settings
        plus `report.baseline` (e.g. method=base), without the experiment's swept settings and
        without settings inside a config group the baseline chooses anew."""
        from harness.experiment.config_schema import validate

        selector = self.cfg.report.get("baseline")
        if not selector:
            return None
        chosen = str(selector).split()
        groups = {o.partition("=")[0] for o in chosen if o.partition("=")[0] in GROUPS}
        # settings inside a group the baseline replaces (method.params.n under method=base) do not apply
        kept = [o for o in fixed_overrides(self.overrides)
                if o.lstrip("+~").partition("=")[0].partition(".")[0] not in groups
                or "." not in o.partition("=")[0]]
        replaced = {_setting(o)[0] for o in chosen}  # the baseline's own choice of a key the command line set
        point = [*(o for o in kept if _setting(o)[0] not in replaced), *chosen]
        cfg = compose(point)
        validate(cfg)
        return CellPlan(point, cfg)

    def refs(self) -> list[CellRef]:
        """The report's rows: each plan's cell key (from the store) with its labels."""
        from harness.store.cells import CellRef

        store = self.store
        return [CellRef(plan.key(store), dict(plan.labels)) for plan in self.plans]

    def baseline(self, refs: list[CellRef]) -> tuple[str, DictConfig] | None:
        """The report's baseline cell and its config: the one row whose labels match every setting of
        `report.baseline`, else the cell those settings compose to, which then joins `refs` (first).
        A baseline that matches several rows is refused with their names."""
        from harness.store.cells import CellRef

        selector = self.cfg.report.get("baseline")
        if not selector:
            return None
        wanted = dict(o.partition("=")[::2] for o in str(selector).split())
        matches = [(ref, plan.cfg) for ref, plan in zip(refs, self.plans)
                   if all(ref.labels.get(k) == v for k, v in wanted.items())]
        if len(matches) > 1:
            names = "; ".join(f"{ref.name()} [{ref.key}]" for ref, _ in matches)
            example = " ".join(f"{k}={v}" for k, v in matches[0][0].labels.items())
            raise UsageError(f"report.baseline={selector!r} matches {len(matches)} cells ({names}); name one, "
                             f"e.g. report.baseline='{example}'")
        if matches:
            return matches[0][0].key, matches[0][1]
        plan = self.baseline_plan()
        key = plan.key(self.store)
        if key not in {r.key for r in refs}:
            label_keys = list(dict.fromkeys(k for r in refs for k in r.labels))
            refs.insert(0, CellRef(key, {k: wanted.get(k, "—") for k in label_keys}))
        return key, plan.cfg


def experiment(overrides: list[str]) -> Experiment:
    """The cell plans of `overrides` (an experiment and settings, sweeps included)."""
    from harness.experiment.config_schema import validate

    points = expand(overrides)
    cfgs = [compose(point) for point in points]
    validate(*cfgs)  # every value typed and in range before any command reads or writes a cell
    labels = label_points(points, cfgs)
    return Experiment(list(overrides), [CellPlan(p, c, lab) for p, c, lab in zip(points, cfgs, labels)])


def resolved_yaml(path: Path) -> dict[str, Any]:
    """A group option's own keys over those of the options of its group it includes first (its
    `defaults`, as model/toy.yaml includes toy_sf.yaml), read with a safe loader, without Hydra."""
    import yaml

    try:
        own = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise yaml_refused(exc, path) from None
    merged: dict[str, Any] = {}
    for entry in own.pop("defaults", None) or []:
        if isinstance(entry, str) and entry != "_self_" and (path.parent / f"{entry}.yaml").is_file():
            merged.update(resolved_yaml(path.parent / f"{entry}.yaml"))
    return {**merged, **own}


def config_description(path: Path) -> str:
    """The first comment of a config file: what the option is."""
    for line in path.read_text().splitlines():
        if line.startswith("#") and not line.startswith("# @package"):
            return line.lstrip("# ").strip()
    return ""
