"""`refinery COMMAND [key=value ...]`: a thin router over the Python API (harness.api, `import refinery`).

Every command composes its configuration with Hydra from sweeps/ and takes Hydra overrides
(`method=base sampler.steps=8 paths.store=/tmp/runs`); `refinery COMMAND --help` lists a command's
options, config groups and their choices. Bad input of any kind ends in one line on stderr naming the
problem and the fix, and exit code 2, before anything is written.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness import __version__
from harness.errors import UsageError, unknown_name

# Nothing heavy is imported here: --version, --help, `COMMAND --help`, `list` and every command-line
# error answer without torch (tests/test_cli.py); each command imports what it needs when it runs.


class _Parser(argparse.ArgumentParser):
    """argparse's errors as the one-line UsageError every command ends in."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message}; see `{self.prog} --help`")


# ---------------------------------------------------------------------------------------------
# commands: each takes the words after its name


def _api(name: str) -> Callable[[list[str]], None]:
    """A command that is the Python API's function of that name (imported when the command runs)."""
    def command(overrides: list[str]) -> None:
        from harness.experiment.plans import fixed_overrides

        fixed_overrides(overrides)  # an unknown option or a syntax error is refused before pandas and torch load
        import harness.api

        getattr(harness.api, name)(overrides)
    return command


def cmd_verify(overrides: list[str]) -> None:
    from harness.api import count, verify

    damaged = verify(overrides)
    if len(damaged):
        raise UsageError(f"{count(len(damaged), 'file')} of {count(damaged.cell.nunique(), 'cell')} damaged or "
                         "missing (listed above); run each cell's command shown there: it regenerates exactly "
                         "those files")


def cmd_export(args: list[str]) -> None:
    """The export's own options are taken out before Hydra parses the rest (a prompt may hold a comma)."""
    from harness.experiment.plans import fixed_overrides
    from harness.report.export import split_options

    fixed_overrides(split_options(args)[1])  # errors before pandas and torch load
    import harness.api

    harness.api.export(args)


def _options(command: str, overrides: list[str], known: list[str]) -> dict[str, str]:
    options = {}
    for o in overrides:
        key, _, value = o.partition("=")
        if key not in known or not value:
            raise unknown_name(f"{command} option", key, known)
        options[key] = value
    return options


def cmd_train_world(overrides: list[str]) -> None:
    from harness.experiment.config_schema import command_options
    from harness.models.toy_train import TrainWorldConfig, train_world

    path = train_world(TrainWorldConfig(**command_options("train-world", TrainWorldConfig, overrides)))
    print(f"toy model written to {path}")


def cmd_distill(overrides: list[str]) -> None:
    from harness.experiment.config_schema import command_options
    from harness.models.toy_distill import DistillConfig, distill

    path = distill(DistillConfig(**command_options("distill", DistillConfig, overrides)))
    print(f"distilled model written to {path}")


def cmd_train(overrides: list[str]) -> None:
    """The train group is not in the root config's defaults (sampling never reads it), so the chosen
    option is appended to them."""
    from harness.experiment.config_schema import validate
    from harness.experiment.plans import compose, group_choices, refuse_repeated

    refuse_repeated(overrides)  # `train=dmd train=reward` would otherwise train the last one
    known = group_choices("train", overrides)
    chosen = [o.partition("=")[2] for o in overrides if o.partition("=")[0].lstrip("+") == "train"]
    name = chosen[-1] if chosen else "reward"
    if name not in known:
        raise unknown_name("train", name, known)
    rest = [o for o in overrides if o.partition("=")[0].lstrip("+") != "train"]
    cfg = compose([f"+train={name}", *rest])
    validate(cfg)  # a bad setting is refused before the training code, and torch, is imported
    from harness.train.checkpoints import log_path
    from harness.train.trainer import start

    path = start(cfg, ["train", *overrides])
    if path is not None and os.environ.get("RANK", "0") == "0":
        print(f"adapter checkpoint at {path} (training log {log_path(path)})")


def cmd_train_reward(overrides: list[str]) -> None:
    from harness.experiment.config_schema import TrainerOptions, command_options
    from harness.verifiers import train_reward

    options = command_options("train-reward", TrainerOptions, overrides)
    train_reward.main([arg for key, value in options.items() for arg in (f"--{key}", str(value))])


def cmd_train_probe(overrides: list[str]) -> None:
    from harness.experiment.config_schema import TrainerOptions, command_options
    from harness.world import probe_train

    options = command_options("train-probe", TrainerOptions, overrides)
    probe_train.main([arg for key, value in options.items() for arg in (f"--{key}", str(value))])


def cmd_weights(args: list[str]) -> None:
    """`weights check [overrides]`: every weight file of the composed run; exit 2 while any is missing.
    `weights convert checkpoint=PATH [key=...] [out=...] model=...`: an upstream generator checkpoint
    -> the model's diffusers-layout transformer folder."""
    commands = {"check": _weights_check, "convert": _weights_convert}
    if not args or args[0] not in commands:
        raise UsageError(f"use `refinery {_usage('weights', 'check')}` or `refinery {_usage('weights', 'convert')}`")
    commands[args[0]](args[1:])


def _weights_check(overrides: list[str]) -> None:
    from harness.experiment.plans import compose
    from harness.experiment.needed import needed_files

    files = needed_files(compose(overrides))
    width = max(len(f.owner) for f in files)
    for f in files:
        print(f"{'ok     ' if f.present else 'MISSING'} {f.owner:{width}s} {f.path}  <- {f.origin}")
    missing = [f for f in files if not f.present]
    if missing:
        raise UsageError(f"{len(missing)} of {len(files)} weight files are missing; place each at the path "
                         "listed (paths.weights is the folder for external files)")


def _weights_convert(args: list[str]) -> None:
    from harness.experiment.plans import compose
    from harness.models.wan_causal.convert import convert
    from harness.models.wan_causal.loader import folder_digest
    from harness.models.weights import WeightFile

    own = {"checkpoint", "key", "out"}
    options = _options("weights convert", [a for a in args if a.partition("=")[0] in own], sorted(own))
    cfg = compose([a for a in args if a.partition("=")[0] not in own])
    if cfg.model.backend != "wan_causal" or cfg.model.get("build"):
        raise UsageError(f"model {cfg.model.name!r} loads no converted checkpoint; convert for model=self_forcing "
                         "or model=causvid")
    if "checkpoint" not in options:
        raise UsageError("weights convert needs checkpoint=PATH, the upstream .pt file (docs/real-models.md)")
    weights = Path(cfg.paths.weights)
    out = Path(options.get("out") or weights / str(cfg.model.transformer))
    summary = convert(Path(options["checkpoint"]), options.get("key", str(cfg.model.convert_key)),
                      str(cfg.model.architecture), out)
    digest = folder_digest(out, tuple(WeightFile(name, "") for name in ("config.json",
                                                                        "diffusion_pytorch_model.safetensors")))
    print(f"converted {summary['tensors']} tensors ({summary['parameters'] / 1e9:.3f} B parameters) of "
          f"{options['checkpoint']} into {out}; content digest {digest}")


def _usage(command: str, sub: str) -> str:
    """A sub-command's usage line (COMMANDS), for its errors and its --help."""
    return f"{command} {sub} {COMMANDS[command].subcommands[sub]}"


def _positionals(args: list[str], usage: str, required: int, optional: int = 0) -> tuple[list[str], list[str]]:
    """Arguments without '=' (paths), and the key=value rest."""
    given = [a for a in args if "=" not in a]
    if not required <= len(given) <= required + optional:
        raise UsageError(f"usage: refinery {usage}")
    return given, [a for a in args if "=" in a]


def cmd_vbench(args: list[str]) -> None:
    """`vbench export | evaluate | aggregate | ingest`: VBench through its official package."""
    commands = {"export": _vbench_export, "evaluate": _vbench_evaluate, "aggregate": _vbench_aggregate,
                "ingest": _vbench_ingest}
    if not args or args[0] not in commands:
        raise unknown_name("vbench command", args[0] if args else "", commands)
    commands[args[0]](args[1:])


def _vbench_export(args: list[str]) -> None:
    from harness.experiment.plans import experiment
    from harness.vbench.export import export_cell, vbench_cli
    from harness.vbench.scores import dimensions_for

    (out,), overrides = _positionals(args, _usage("vbench", "export"), 1)
    exp = experiment(overrides)
    v = exp.cfg.vbench
    full_info = Path(v.full_info) if v.full_info else None
    dims = dimensions_for(v.mode, list(v.dimensions) if v.dimensions else None)
    store = exp.store
    for ref in exp.refs():
        export = export_cell(store.cell(ref.key), Path(out), v.mode, v.fps, v.crf, full_info)
        print(f"cell {ref.key}: {len(set(export.videos.values()))} videos ({v.mode}) in {export.video_dir}\n"
              f"  evaluate: refinery vbench evaluate {export.path}\n"
              f"  or where VBench is installed: {vbench_cli(export, dims, full_info)}")


def _vbench_evaluate(args: list[str]) -> None:
    from harness.experiment.plans import compose
    from harness.vbench.evaluate import Settings, preflight, run
    from harness.vbench.scores import format_scores, read_results

    (folder,), overrides = _positionals(args, _usage("vbench", "evaluate"), 1)
    settings = Settings.from_config(compose(overrides))
    results = run(preflight(Path(folder), settings), settings)
    print(format_scores(read_results(results).scores))
    print(f"results in {results}; `refinery vbench ingest {folder}` puts them into the store")


def _vbench_aggregate(args: list[str]) -> None:
    from harness.vbench.scores import aggregate, format_scores, read_results, to_json

    (path,), rest = _positionals(args, _usage("vbench", "aggregate"), 1)
    form = _options("vbench aggregate", rest, ["format"]).get("format", "table")
    if form not in ("table", "json"):
        raise UsageError(f"format={form} is unknown; use format=table or format=json")
    summary = aggregate(read_results(Path(path)).scores, path)
    print(to_json(summary) if form == "json" else format_scores(summary.dimensions, summary))


def _vbench_ingest(args: list[str]) -> None:
    from harness.experiment.plans import compose
    from harness.store.cells import Store
    from harness.vbench.export import read_export
    from harness.vbench.ingest import ingest
    from harness.vbench.scores import read_results

    given, overrides = _positionals(args, _usage("vbench", "ingest"), 1, optional=1)
    export = read_export(Path(given[0]))
    results = read_results(Path(given[1]) if len(given) > 1 else export.result_dir)
    cell, payload = ingest(export, results, Store(Path(compose(overrides).paths.store)))
    print(f"cell {cell.key}: {payload['metric']} scores ({', '.join(payload['values'])}) written to "
          f"{cell.path / 'scores'}; report them with report.metrics=[{payload['metric']}]")


# ---------------------------------------------------------------------------------------------
# refinery list


def cmd_list(args: list[str]) -> None:
    """`list experiments | methods | metrics | models | cells [key=value ...]`."""
    kinds = {"experiments": _list_experiments, "methods": _list_methods, "metrics": _list_metrics,
             "models": _list_models, "cells": _list_cells}
    if not args or args[0] not in kinds:
        raise unknown_name("list", args[0] if args else "", kinds)
    kinds[args[0]](args[1:])


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)] if rows else []
    for row in rows:
        print("  ".join([*(c.ljust(w) for c, w in zip(row, widths)), row[-1]]).rstrip())


def _group(group: str, overrides: list[str]) -> dict[str, Path]:
    from harness.experiment.plans import group_configs

    return group_configs(group, overrides)


def _list_experiments(overrides: list[str]) -> None:
    from harness.experiment.plans import config_description

    _table([(name, config_description(path)) for name, path in _group("experiment", overrides).items()])


def _list_methods(overrides: list[str]) -> None:
    """Every `method=` option (sweeps/method/ and plug-ins' configs), the plug-in it runs and where
    that comes from; read from the files, nothing imported but include folders' plug-ins."""
    from harness.engine.registry import METHODS
    from harness.experiment.plans import config_description, load_plugin_folders, resolved_yaml

    load_plugin_folders(overrides)  # their entries register on import
    rows = []
    for option, path in _group("method", overrides).items():
        body = resolved_yaml(path)
        body = body.get("method", body)  # a `# @package _global_` option sets method: and other groups
        name = str(body.get("name", option))
        origin = METHODS.origin(name) if name in METHODS.names() else "not registered"
        described = config_description(path) or (METHODS.describe(name) if origin != "not registered" else "")
        rows.append((option, name if name == option else f"-> {name}", origin, described))
    _table(rows)


def _list_metrics(overrides: list[str]) -> None:
    from harness.engine.registry import METRICS
    from harness.experiment.plans import load_plugin_folders

    load_plugin_folders(overrides)
    _table([(n, METRICS.origin(n), METRICS.describe(n)) for n in METRICS.names()])


def _list_models(overrides: list[str]) -> None:
    from harness.experiment.plans import config_description, resolved_yaml

    _table([(option, f"backend {resolved_yaml(path).get('backend', '?')}", config_description(path))
            for option, path in _group("model", overrides).items()])


def _store_root(overrides: list[str]) -> Path:
    """paths.store as the command line sets it, without composing (no Hydra) where it is the only override."""
    stores = [o.partition("=")[2] for o in overrides if o.partition("=")[0] == "paths.store"]
    if len(stores) == len(overrides):
        return Path(stores[-1] if stores else "runs")
    from harness.experiment.plans import compose

    return Path(compose(overrides).paths.store)


def _list_cells(overrides: list[str]) -> None:
    """Every cell of the store: key, state, videos, method with its settings, model, suite; read from
    its files only."""
    from harness.store.cells import Store

    root = _store_root(overrides)
    if not (root / "cells").is_dir():
        print(f"no store at {root.resolve()} (paths.store); `refinery run` or `sweep` makes one")
        return
    store = Store(root)
    rows = []
    for cell in store.cells():
        spec = cell.spec() if cell.path.joinpath("spec.json").is_file() else None
        rows.append((cell.key, cell.state(), f"{len(cell.video_indices())} videos", _cell_summary(spec)))
    _table(rows)
    print(f"{len(rows)} cells in {store.root.resolve()}")


def _cell_summary(spec: object) -> str:
    """What a cell is, from its spec: `bon(n=3, verifier=world_reward) on toy_sf (stochastic, 4 steps),
    suite world_eval`, so cells that differ only in a parameter can be told apart."""
    if not isinstance(spec, dict):
        return "no spec"
    method = spec.get("method", {})
    params = ", ".join(f"{k}={v}" for k, v in sorted((method.get("params") or {}).items()))
    sampler = spec.get("sampler", {})
    return (f"{method.get('name')}({params}) on {spec.get('model', {}).get('name')} "
            f"({sampler.get('kind')}, {sampler.get('steps')} steps), suite {spec.get('suite', {}).get('name')}")


# ---------------------------------------------------------------------------------------------
# the router


@dataclass(frozen=True)
class Command:
    run: Callable[[list[str]], None]
    summary: str
    example: str
    takes: str = "config"  # config: Hydra overrides; options: the command's own key=value; words: sub-commands
    subcommands: dict[str, str] = field(default_factory=dict)  # words: each sub-command's usage
    own: tuple[str, ...] = ()  # config: the command's own KEY=VALUE options beside the overrides, for --help


COMMANDS = {
    "run": Command(_api("run"), "generate and score one cell", "refinery run method=bon sampler.steps=8"),
    "plan": Command(_api("plan_cost"), "what a sweep or a training run will cost, before it runs",
                    "refinery plan experiment=table2_reward model=self_forcing gpus=8 [prompts=N gpu_memory_gb=80] "
                    "| refinery plan model=self_forcing method=autorefiner train=dmd train.devices=8"),
    "sweep": Command(_api("sweep"), "a Hydra multirun over the cells of an experiment",
                     "refinery sweep experiment=quickstart [hydra/launcher=joblib|slurm]"),
    "score": Command(_api("score"), "(re)score stored videos", "refinery score experiment=quickstart"),
    "report": Command(_api("report"), "tables, figures, HTML from the store",
                      "refinery report experiment=quickstart [report.timing=true]"),
    "bench": Command(_api("bench"), "the timing pass (each cell against its baseline)",
                     "refinery bench experiment=training_free"),
    "leaderboard": Command(_api("leaderboard"), "rank methods across experiments",
                           "refinery leaderboard experiment=training_free,table2_reward"),
    "export": Command(cmd_export, "an mp4 or GIF of a cell, a sample or a report's gallery",
                      "refinery export method=bon out=bon.mp4 [video=3 | prompt='...' seed=0 | gallery=true] "
                      "[fps=16 crf=17 scale=4]", own=(
                          "out=FILE.mp4|FILE.gif  the file to write (required; the format from its suffix)",
                          "video=I | prompt=P [seed=S]  one sample of the cell (seed: the sample's; default the first)",
                          "gallery=true  the report's cells (rows) x report.gallery prompts (columns)",
                          "fps=N  default vbench.fps;  crf=0..51  mp4 quality, default vbench.crf",
                          "scale=N  whole-multiple enlargement; default up to about 128 pixels a video")),
    "verify": Command(cmd_verify, "check every cell's files", "refinery verify [experiment=quickstart | paths.store=runs]"),
    "list": Command(cmd_list, "list experiments, methods, metrics, models or cells",
                    "refinery list experiments|methods|metrics|models|cells", takes="words", subcommands={
                        "experiments": "[key=value ...]", "methods": "[plugins=[DIR]]", "metrics": "[plugins=[DIR]]",
                        "models": "[key=value ...]", "cells": "[paths.store=DIR]"}),
    "train": Command(cmd_train, "train a method's adapter",
                     "refinery train [train=reward|dmd] method=autorefiner [train.out=...]"),
    "train-world": Command(cmd_train_world, "retrain the flow toy from scratch (the same command resumes it)",
                           "refinery train-world [steps=2500 out=path threads=2]", takes="options"),
    "distill": Command(cmd_distill, "distil toy_sf or toy_causvid from the toy",
                       "refinery distill recipe=self_forcing|causvid [steps=100 threads=1]", takes="options"),
    "train-reward": Command(cmd_train_reward, "retrain the world reward verifier",
                            "refinery train-reward [steps=1200 out=path]", takes="options"),
    "train-probe": Command(cmd_train_probe, "retrain the world probe (features)",
                           "refinery train-probe [steps=1500 out=path]", takes="options"),
    "weights": Command(cmd_weights, "check or convert weight files",
                       "refinery weights check model=self_forcing | weights convert model=self_forcing checkpoint=PATH",
                       takes="words", subcommands={
                           "check": "[key=value ...]  (every weight file the composed run reads: where, present?, origin)",
                           "convert": "model=self_forcing|causvid checkpoint=PATH [key=generator_ema] [out=DIR]  "
                                      "(an upstream .pt -> the model's diffusers transformer folder)"}),
    "vbench": Command(cmd_vbench, "VBench via its official package",
                      "refinery vbench export|evaluate|aggregate|ingest ...", takes="words", subcommands={
                          "export": "OUT [key=value ...]  (the cells' videos as mp4 in VBench's layout under OUT)",
                          "evaluate": "DIR [key=value ...]  (run VBench on an export folder)",
                          "aggregate": "PATH [format=table|json]  (VBench's totals from its result files)",
                          "ingest": "DIR [RESULTS] [key=value ...]  (VBench's per-video scores into the store)"}),
}
ALIASES = {"methods": ["list", "methods"], "metrics": ["list", "metrics"]}


def _root_settings() -> list[tuple[str, str]]:
    """The root config's own settings, each with its default or, for a section, its keys; for --help."""
    import yaml

    from harness.assets import CONFIG_DIR

    root = yaml.safe_load((CONFIG_DIR / "config.yaml").read_text())
    return [(str(key), f"({', '.join(map(str, value))})" if isinstance(value, dict) else
             "null" if value is None else str(value).replace("'", "")) for key, value in root.items()
            if key not in ("defaults", "hydra")]


def _epilog(name: str, command: Command) -> str:
    from harness.experiment.plans import GROUPS, group_choices

    lines = [f"example: {command.example}", ""]
    if command.own:
        lines += ["options of the command (KEY=VALUE):", *(f"  {o}" for o in command.own), ""]
    if command.takes == "config":
        lines.append("config groups (GROUP=OPTION; OPTION,OPTION sweeps):")
        lines += [f"  {group:11s} {', '.join(group_choices(group))}" for group in GROUPS]
        if name == "train":
            lines.append(f"  {'train':11s} {', '.join(group_choices('train'))}")
        lines += ["", "settings (KEY=VALUE; nested keys with dots, e.g. sampler.steps=8, method.params.n=3;",
                  "plugins=[DIR,...]: folders of plug-in methods, metrics, models and their configs):"]
        lines += [f"  {k:18s} {v}" for k, v in _root_settings()]
    elif command.takes == "options":
        lines.append("options (KEY=VALUE):")
        lines += [f"  {n}" for n in _own_options(name)]
    elif command.subcommands:
        lines.append("sub-commands (`refinery " + name + " SUB --help` for one):")
        lines += [f"  refinery {_usage(name, sub)}" for sub in command.subcommands]
    return "\n".join(lines)


OPTION_SCHEMAS = {  # the dataclass of each command's own options (module, class)
    "train-world": ("harness.models.toy_train", "TrainWorldConfig"),
    "distill": ("harness.models.toy_distill", "DistillConfig"),
    "train-reward": ("harness.experiment.config_schema", "TrainerOptions"),
    "train-probe": ("harness.experiment.config_schema", "TrainerOptions"),
}


def _own_options(name: str) -> list[str]:
    """A command's own options with their defaults as the source writes them (null: the command's
    built-in one), read from the dataclass's source so that --help imports no training code."""
    import ast
    import importlib.util

    module, cls = OPTION_SCHEMAS[name]
    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
    body = next(node.body for node in tree.body if isinstance(node, ast.ClassDef) and node.name == cls)
    options = []
    for item in body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            value = item.value
            if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "option":
                value = value.args[0] if value.args else None
            shown = "" if value is None else "null" if isinstance(value, ast.Constant) and value.value is None \
                else ast.literal_eval(value) if isinstance(value, ast.Constant) else ast.unparse(value)
            options.append(f"{item.target.id}={shown}")
    return options


def parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; the help text (epilog) is built for `command` alone, the one being asked
    about, since it lists config options read from disk."""
    top = _Parser(prog="refinery", description="Compare inference-time methods on autoregressive video "
                  "diffusion models.", formatter_class=argparse.RawDescriptionHelpFormatter,
                  epilog="`refinery COMMAND --help` lists a command's options; the Python API is `import refinery`.")
    top.add_argument("--version", action="version", version=f"refinery {__version__}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, spec in COMMANDS.items():
        p = sub.add_parser(name, help=spec.summary, description=spec.summary,
                           epilog=_epilog(name, spec) if name == command else None,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("args", nargs="*", metavar="key=value" if spec.takes != "words" else "ARG",
                       help={"config": "Hydra overrides: GROUP=OPTION, KEY=VALUE, ~KEY (remove), a,b (sweep)",
                             "options": "the command's own options (below)", "words": "sub-command and its arguments"}
                       [spec.takes])
    return top


def _subcommand_help(args: list[str]) -> bool:
    """`refinery vbench export --help`: the sub-command's own usage, not its command's."""
    spec = COMMANDS.get(args[0])
    if spec is None or not spec.subcommands or len(args) < 3 or args[1] not in spec.subcommands:
        return False
    if not {"-h", "--help"} & set(args[2:]):
        return False
    print(f"usage: refinery {_usage(args[0], args[1])}")
    return True


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if not args or args[0] in ("help",):
            parser().print_help()
            return 0
        if args[0] in ALIASES:
            args = [*ALIASES[args[0]], *args[1:]]
        if not args[0].startswith("-") and args[0] not in COMMANDS:
            raise unknown_name("command", args[0], [*COMMANDS, *ALIASES])
        if _subcommand_help(args):
            return 0
        asks_help = bool({"-h", "--help"} & set(args))  # the epilog reads configs from disk: only for help
        parsed = parser(args[0] if asks_help else None).parse_args(args)
        if parsed.command is None:
            raise UsageError("name a command; see `refinery --help`")
        COMMANDS[parsed.command].run(parsed.args)
    except UsageError as exc:
        print(f"refinery: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help and --version end here
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
