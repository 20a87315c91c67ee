"""`refinery`: run | sweep | score | report | verify | bench | leaderboard | train | train-world | train-reward | train-probe | vbench | weights | methods | metrics.

Every command composes its configuration with Hydra from sweeps/ and takes Hydra overrides
(`method=base sampler.steps=8 paths.store=/tmp/runs`). Bad input of any kind ends in one line on
stderr naming the problem and the fix, and exit code 2, before anything is written.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from harness.errors import UsageError, unknown_name

if TYPE_CHECKING:
    from harness.store import Cell, Damage

CONFIG_DIR = Path(__file__).resolve().parent.parent / "sweeps"
GROUPS = ("model", "sampler", "method", "suite", "metric", "experiment")
USAGE = """usage: refinery COMMAND [key=value ...]

commands:
  run          generate and score one cell          refinery run method=base sampler.steps=8
  sweep        a Hydra multirun over cells          refinery sweep experiment=quickstart [hydra/launcher=joblib]
  score        (re)score stored videos              refinery score experiment=quickstart
  report       tables, figures, HTML from the store  refinery report experiment=quickstart [report.timing=true]
  bench        the timing pass (method vs baseline)  refinery bench experiment=training_free
  leaderboard  rank methods across experiments      refinery leaderboard experiment=training_free,table2_reward
  verify       check every cell's files             refinery verify [experiment=quickstart | paths.store=runs]
  train        train a method's adapter             refinery train [train=reward|dmd] method=autorefiner [train.out=...]
  train-world  retrain the toy model from scratch   refinery train-world [steps=2500 out=path threads=2]
  train-reward retrain the world reward verifier    refinery train-reward [steps=1200 out=path]
  train-probe  retrain the world probe (features)   refinery train-probe [steps=1500 out=path]
  weights      check or convert weight files        refinery weights check model=self_forcing
                                                    refinery weights convert model=self_forcing checkpoint=PATH
  vbench       VBench via its official package      refinery vbench export|evaluate|aggregate|ingest ...
  methods      list registered methods
  metrics      list registered metrics
"""


# ---------------------------------------------------------------------------------------------
# composition


def _check_group_choices(overrides: list[str]) -> None:
    """Unknown config-group options get a did-you-mean line instead of Hydra's traceback."""
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key not in GROUPS or not value or value == "null":
            continue
        known = sorted(p.stem for p in (CONFIG_DIR / key).glob("*.yaml"))
        for choice in value.split(","):
            if choice not in known:
                raise unknown_name(key, choice, known)


def compose(overrides: list[str], with_hydra: bool = False) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from harness.config_schema import override_error

    _check_group_choices(overrides)
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base=None, job_name="refinery"):
            return hydra_compose("config", overrides=overrides, return_hydra_config=with_hydra)
    except (HydraException, OmegaConfBaseException) as exc:
        raise override_error(exc, overrides, compose) from None


def _parse(overrides: list[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from harness.config_schema import override_error

    _check_group_choices(overrides)
    try:
        return OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise override_error(exc, overrides, compose) from None


def sweep_points(overrides: list[str]) -> list[tuple[list[str], DictConfig]]:
    """Every cell of a sweep: the experiment's sweeper params and the command line's sweeps, expanded
    as Hydra's basic sweeper expands them; each with its composed config."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    given = _parse(overrides)
    fixed = [o.input_line for o in given if not o.is_sweep_override()]
    params = compose(fixed, with_hydra=True).hydra.sweeper.params
    params = OmegaConf.to_container(params) if params else {}
    # the command line's overrides win over the experiment's sweep of the same key
    keys = {o.get_key_element() for o in given}
    swept = [f"{k}={v}" for k, v in params.items() if k not in keys] + overrides
    parsed = OverridesParser.create().parse_overrides(swept)
    points = BasicSweeper.split_arguments(parsed, None)[0]
    return [(point, compose(point)) for point in points]


# ---------------------------------------------------------------------------------------------
# commands


def _labels(points: list[tuple[list[str], DictConfig]]) -> list[dict[str, str]]:
    """The settings that vary across a sweep's cells label its rows; a single cell is labelled by
    its method (the method option chosen, e.g. base_2x_steps, else the method's name)."""
    parsed = [dict(o.partition("=")[::2] for o in point) for point, _ in points]
    varying = [k for k in parsed[0] if len({p.get(k) for p in parsed}) > 1]
    return [{k: p[k] for k in varying} or {"method": p.get("method", cfg.method.name)}
            for p, (_, cfg) in zip(parsed, points)]


def cmd_run(overrides: list[str]) -> None:
    _run_cell(compose(overrides), overrides)


def _run_cell(cfg: DictConfig, overrides: list[str] | None = None) -> None:
    """One cell: generate what is missing or damaged, score what is stale. Also the body of every sweep
    job, whose overrides (None) Hydra knows."""
    from harness.launchers import follow_sweep
    from harness.pipeline import generate, open_store, resolve_run, score
    from harness.report import headline_lines

    follow_sweep()
    run = resolve_run(cfg)
    store = open_store(cfg)
    made = generate(run, store, resume=_resume_command(overrides))
    cell = store.cell(run.key)
    scored = score(cell, cfg.metric, Path(cfg.paths.weights))
    print(f"cell {run.key}: {made.videos} videos generated ({made.model_calls} model calls), "
          f"{len(run.items())} stored at {cell.path}; scored: {', '.join(scored) or 'up to date'}")
    print("\n".join(headline_lines(store, run.key, list(cfg.report.headline), _resampling(cfg))))


def _resume_command(overrides: list[str] | None) -> str:
    """The `refinery run` that finishes this cell: the given overrides, or a sweep job's own."""
    if overrides is None:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return shlex.join(["refinery", "run", *overrides])


def cmd_sweep(overrides: list[str]) -> None:
    import hydra

    from harness.launchers import check_launcher, mark_sweep
    from harness.pipeline import open_store, resolve_run

    points = sweep_points(overrides)
    keys = {resolve_run(cfg).key for _, cfg in points}  # validate every cell before writing anything
    baseline = _baseline_cfg(overrides, points[0][1])
    if baseline is not None and resolve_run(baseline).key in keys:
        baseline = None  # the sweep runs it anyway
    check_launcher(compose(points[0][0], with_hydra=True).hydra.launcher, Path(points[0][1].paths.store))
    for _, cfg in points:
        open_store(cfg)
    mark_sweep()
    sys.argv = [sys.argv[0], "--multirun", *overrides]
    hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base=None)(_run_cell)()
    if baseline is not None:  # the cell the report's overheads are relative to
        _run_cell(baseline, _baseline_overrides(overrides, baseline))
    print(f"sweep done: {len(points) + (baseline is not None)} cells in {Path(points[0][1].paths.store).resolve()}")


def _refs(overrides: list[str]):
    from harness.pipeline import resolve_run
    from harness.report import CellRef

    points = sweep_points(overrides)
    labels = _labels(points)
    return points, [CellRef(resolve_run(cfg).key, lab) for (_, cfg), lab in zip(points, labels)]


def _baseline_cfg(overrides: list[str], cfg: DictConfig) -> DictConfig | None:
    """The cell that compute overheads are measured against: the command line's fixed settings plus
    `report.baseline` (e.g. method=base), without the experiment's swept settings."""
    if not cfg.report.get("baseline"):
        return None
    return compose(_baseline_overrides(overrides, cfg))


def _baseline_overrides(overrides: list[str], cfg: DictConfig) -> list[str]:
    fixed = [o.input_line for o in _parse(overrides) if not o.is_sweep_override()]
    return [*fixed, *str(cfg.report.baseline).split()]


def _baseline(overrides: list[str], points: list, refs: list) -> tuple[str, DictConfig] | None:
    """The report's baseline cell and its config: the one row whose labels match every setting of
    `report.baseline`, else the cell those settings compose to, which then joins `refs` (first).
    A baseline that matches several rows is refused with their names."""
    from harness.pipeline import resolve_run
    from harness.report import CellRef

    cfg = points[0][1]
    selector = cfg.report.get("baseline")
    if not selector:
        return None
    wanted = dict(o.partition("=")[::2] for o in str(selector).split())
    matches = [(ref, point_cfg) for ref, (_, point_cfg) in zip(refs, points)
               if all(ref.labels.get(k) == v for k, v in wanted.items())]
    if len(matches) > 1:
        names = "; ".join(f"{ref.name()} [{ref.key}]" for ref, _ in matches)
        example = " ".join(f"{k}={v}" for k, v in matches[0][0].labels.items())
        raise UsageError(f"report.baseline={selector!r} matches {len(matches)} cells ({names}); name one, "
                         f"e.g. report.baseline='{example}'")
    if matches:
        return matches[0][0].key, matches[0][1]
    baseline_cfg = _baseline_cfg(overrides, cfg)
    key = resolve_run(baseline_cfg).key
    if key not in {r.key for r in refs}:
        label_keys = list(dict.fromkeys(k for r in refs for k in r.labels))
        refs.insert(0, CellRef(key, {k: wanted.get(k, "—") for k in label_keys}))
    return key, baseline_cfg


def _resampling(cfg: DictConfig):
    from harness.stats import Resampling

    return Resampling(**OmegaConf.to_container(cfg.report.stats))


def cmd_score(overrides: list[str]) -> None:
    from harness.pipeline import open_store, score

    points, refs = _refs(overrides)
    store = open_store(points[0][1])
    for (_, cfg), ref in zip(points, refs):
        computed = score(store.cell(ref.key), cfg.metric, Path(cfg.paths.weights), force=True)
        print(f"cell {ref.key}: scored {', '.join(computed)}")


def cmd_report(overrides: list[str]) -> None:
    from harness.pipeline import open_store
    from harness.report import report_folder, write_report
    from harness.timing import read_timings

    points, refs = _refs(overrides)
    cells = list(zip(refs, (cfg for _, cfg in points)))  # before the baseline may join refs
    cfg = points[0][1]
    store = open_store(cfg)
    baseline = _baseline(overrides, points, refs)
    for ref in refs:  # a report never goes on with fewer videos than a cell has
        store.cell(ref.key).refuse_damage()
    if baseline and cfg.report.timing:
        _bench(cells, baseline, store)
    name = cfg.experiment or "adhoc"
    out = report_folder(Path(cfg.paths.reports), name, overrides)
    report = cfg.report
    hacking = report.get("reward_hacking")
    paths = write_report(
        store, refs, out, title=f"Refinery report: {name}", metrics=list(report.metrics),
        headline=list(report.headline), baseline=baseline[0] if baseline else None,
        hacking=(hacking.reward, list(hacking.held_out)) if hacking else None, resampling=_resampling(cfg),
        timings=read_timings([store.root], baseline[0], [r.key for r in refs]) if baseline else None,
        generation_timings=frozenset(report.generation_timings), gallery_prompts=int(report.gallery),
        latex=OmegaConf.to_container(report.latex) if report.get("latex") else None)
    print(f"report written to {out.resolve()}/ ({', '.join(p.name for p in paths.values())})\n"
          f"open {paths['report.html'].resolve()}")


def cmd_bench(overrides: list[str]) -> None:
    """The timing pass: every cell of the report against its baseline, interleaved in this process."""
    from harness.pipeline import open_store

    points, refs = _refs(overrides)
    cells = list(zip(refs, (cfg for _, cfg in points)))
    baseline = _baseline(overrides, points, refs)
    if baseline is None:
        raise UsageError("refinery bench times cells against report.baseline, which is not set; "
                         "set it, e.g. report.baseline=method=base")
    _bench(cells, baseline, open_store(points[0][1]))


def _bench(cells: list, baseline: tuple[str, DictConfig], store) -> None:
    from harness.pipeline import resolve_run
    from harness.timing import time_against, write_timing

    options = baseline[1].report.bench
    if options.threads:  # e.g. 1 on a shared machine: no thread of the pass waits on a descheduled sibling
        import torch

        torch.set_num_threads(int(options.threads))
    base = resolve_run(baseline[1])
    timed = [(ref, cfg) for ref, cfg in cells if ref.key != baseline[0]]
    print(f"timing pass: {len(timed)} cells against {baseline[0]}, {options.repeats} repeats of "
          f"{options.batch} videos each, after {options.warmup} warm-up run(s)")
    for ref, cfg in timed:
        timing = time_against(resolve_run(cfg), base, options.batch, options.repeats, options.warmup)
        write_timing(store.root, timing)
        load = f"; LOADED: load {max(timing.load)} on {timing.cores} cores" if timing.loaded else ""
        print(f"  {ref.name()}: {timing.fps:.1f} FPS, base {timing.base_fps:.1f} FPS, "
              f"FPS ÷ base {timing.ratio:.3f} (pairwise {timing.ratio_low:.3f}–{timing.ratio_high:.3f}; "
              f"CPU time {timing.cpu_ratio:.3f}{load})")


def cmd_leaderboard(overrides: list[str]) -> None:
    """`leaderboard experiment=a,b [...]`: the cells of every named experiment (each composed with the
    other overrides), read from paths.store and report.leaderboard.stores, ranked on one frozen suite."""
    from harness.leaderboard import Stores, write_leaderboard
    from harness.report import report_folder
    from harness.store import Store
    from harness.timing import read_timings

    named = [o.partition("=")[2] for o in overrides if o.partition("=")[0] == "experiment"]
    rest = [o for o in overrides if o.partition("=")[0] != "experiment"]
    experiments = [e for value in named for e in value.split(",") if e]
    if not experiments:
        raise UsageError("name the experiments to rank, e.g. refinery leaderboard experiment=training_free,table2_reward")
    points, refs = [], []
    for experiment in experiments:
        for point, ref in zip(*_refs([f"experiment={experiment}", *rest])):
            known = next((r for r in refs if r.key == ref.key), None)
            if known is None:
                points.append(point)
                refs.append(ref)
            else:  # a cell of two experiments (their shared baseline): one row, both labels
                known.labels = {**ref.labels, **known.labels}
    first = [f"experiment={experiments[0]}", *rest]
    cfg = points[0][1]
    baseline = _baseline(first, points, refs)
    if baseline is None:
        raise UsageError("a leaderboard ranks against report.baseline, which is not set; set it, e.g. "
                         "report.baseline=method=base")
    stores = Stores([Store(Path(p)) for p in [cfg.paths.store, *cfg.report.leaderboard.stores]])
    out = report_folder(Path(cfg.paths.reports), "leaderboard_" + "+".join(experiments), rest)
    paths = write_leaderboard(stores, refs, out, f"Refinery leaderboard: {', '.join(experiments)}",
                              list(cfg.report.leaderboard.metrics or cfg.report.headline), baseline[0],
                              resampling=_resampling(cfg), timings=read_timings(stores.roots, baseline[0], [r.key for r in refs]),
                              generation_timings=frozenset(cfg.report.generation_timings))
    print(f"leaderboard written to {out.resolve()}/ ({', '.join(p.name for p in paths.values())})")


def cmd_verify(overrides: list[str]) -> None:
    """`verify [experiment=... | key=value ...]`: the cells of that sweep, or with no setting but
    paths.*, every cell of the store; each damaged or missing file on a line with its cell."""
    from harness.store import Store

    sweep = [o for o in overrides if not o.lstrip("+~").startswith("paths.")]
    store = Store(Path(compose(overrides).paths.store))  # checking a whole store needs no model (nor torch)
    cells = [store.cell(ref.key) for ref in _refs(overrides)[1]] if sweep else store.cells()
    found = [_print_damage(cell, listed=bool(sweep)) for cell in cells]
    damaged = [len(damage) for damage, _ in found if damage]
    states = [state for _, state in found]
    print(f"{_count(len(cells), 'cell')} checked in {store.root.resolve()}: {_count(sum(damaged), 'damaged file')}"
          f", {states.count('interrupted')} interrupted, {states.count('missing')} not run")
    if damaged:
        raise UsageError(f"{_count(sum(damaged), 'file')} of {_count(len(damaged), 'cell')} damaged or missing "
                         "(listed above); run each cell's command shown there: it regenerates exactly those files")


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


def _print_damage(cell: Cell, listed: bool) -> tuple[list[Damage], str]:
    """Print what is wrong with one cell for `verify`; returns its damage and state."""
    damage, state = cell.damage(), cell.state()
    for d in damage:
        print(f"cell {cell.key}: {d.file} {d.problem}")
    for fix in dict.fromkeys(cell.fix(d.file) for d in damage):
        print(f"cell {cell.key}: to repair, {fix}")
    if state == "interrupted":
        status = cell.status()
        print(f"cell {cell.key}: interrupted (its writer, {status['host']} pid {status['pid']}, is gone); "
              f"resume it with `{cell.resume_command()}`")
    elif state == "missing" and listed:
        print(f"cell {cell.key}: missing (not run yet)")
    return damage, state


def _options(command: str, overrides: list[str], known: list[str]) -> dict[str, str]:
    options = {}
    for o in overrides:
        key, _, value = o.partition("=")
        if key not in known or not value:
            raise unknown_name(f"{command} option", key, known)
        options[key] = value
    return options


def cmd_train_world(overrides: list[str]) -> None:
    from harness.config_schema import command_options
    from harness.models.toy_train import TrainWorldConfig, train_world

    path = train_world(TrainWorldConfig(**command_options("train-world", TrainWorldConfig, overrides)))
    print(f"toy model written to {path}")


def cmd_train(overrides: list[str]) -> None:
    """`train [train=reward|dmd] [key=value ...]`: the train group is not in the root config's
    defaults (sampling never reads it), so the chosen option is appended to them."""
    from harness.train.checkpoints import log_path
    from harness.train.trainer import train

    known = sorted(p.stem for p in (CONFIG_DIR / "train").glob("*.yaml"))
    chosen = [o.partition("=")[2] for o in overrides if o.partition("=")[0].lstrip("+") == "train"]
    name = chosen[-1] if chosen else "reward"
    if name not in known:
        raise unknown_name("train", name, known)
    rest = [o for o in overrides if o.partition("=")[0].lstrip("+") != "train"]
    path = train(compose([f"+train={name}", *rest]))
    print(f"adapter checkpoint at {path} (training log {log_path(path)})")


def cmd_train_reward(overrides: list[str]) -> None:
    from harness.config_schema import TrainerOptions, command_options
    from harness.verifiers import train_reward

    options = command_options("train-reward", TrainerOptions, overrides)
    train_reward.main([arg for key, value in options.items() for arg in (f"--{key}", str(value))])


def cmd_train_probe(overrides: list[str]) -> None:
    from harness.config_schema import TrainerOptions, command_options
    from harness.world import probe_train

    options = command_options("train-probe", TrainerOptions, overrides)
    probe_train.main([arg for key, value in options.items() for arg in (f"--{key}", str(value))])


def cmd_weights(args: list[str]) -> None:
    """`weights check [overrides]`: every weight file of the composed run; exit 2 while any is missing.
    `weights convert checkpoint=PATH [key=...] [out=...] model=...`: an upstream generator checkpoint
    -> the model's diffusers-layout transformer folder."""
    commands = {"check": _weights_check, "convert": _weights_convert}
    if not args or args[0] not in commands:
        raise UsageError("use `refinery weights check [key=value ...]` or "
                         "`refinery weights convert model=self_forcing checkpoint=PATH [key=generator_ema] [out=DIR]`")
    commands[args[0]](args[1:])


def _weights_check(overrides: list[str]) -> None:
    from harness.weights import needed_files

    files = needed_files(compose(overrides))
    width = max(len(f.owner) for f in files)
    for f in files:
        print(f"{'ok     ' if f.present else 'MISSING'} {f.owner:{width}s} {f.path}  <- {f.origin}")
    missing = [f for f in files if not f.present]
    if missing:
        raise UsageError(f"{len(missing)} of {len(files)} weight files are missing; place each at the path "
                         "listed (paths.weights is the folder for external files)")


def _weights_convert(args: list[str]) -> None:
    from harness.models.wan_causal.convert import convert
    from harness.models.wan_causal.loader import folder_digest
    from harness.weights import WeightFile

    own = {"checkpoint", "key", "out"}
    options = _options("weights convert", [a for a in args if a.partition("=")[0] in own], sorted(own))
    cfg = compose([a for a in args if a.partition("=")[0] not in own])
    if cfg.model.backend != "wan_causal" or cfg.model.get("build"):
        raise UsageError(f"model {cfg.model.name!r} loads no converted checkpoint; convert for model=self_forcing "
                         "or model=causvid")
    if "checkpoint" not in options:
        raise UsageError("weights convert needs checkpoint=PATH, the upstream .pt file (README, 'Real models')")
    weights = Path(cfg.paths.weights)
    out = Path(options.get("out") or weights / str(cfg.model.transformer))
    summary = convert(Path(options["checkpoint"]), options.get("key", str(cfg.model.convert_key)),
                      str(cfg.model.architecture), out)
    digest = folder_digest(out, tuple(WeightFile(name, "") for name in ("config.json",
                                                                        "diffusion_pytorch_model.safetensors")))
    print(f"converted {summary['tensors']} tensors ({summary['parameters'] / 1e9:.3f} B parameters) of "
          f"{options['checkpoint']} into {out}; content digest {digest}")


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
    from harness.pipeline import open_store
    from harness.vbench.export import export_cell, vbench_cli
    from harness.vbench.scores import dimensions_for

    (out,), overrides = _positionals(args, "vbench export OUT [key=value ...]", 1)
    points, refs = _refs(overrides)
    v = points[0][1].vbench
    full_info = Path(v.full_info) if v.full_info else None
    dims = dimensions_for(v.mode, list(v.dimensions) if v.dimensions else None)
    store = open_store(points[0][1])
    for ref in refs:
        export = export_cell(store.cell(ref.key), Path(out), v.mode, v.fps, v.crf, full_info)
        print(f"cell {ref.key}: {len(set(export.videos.values()))} videos ({v.mode}) in {export.video_dir}\n"
              f"  evaluate: refinery vbench evaluate {export.path}\n"
              f"  or where VBench is installed: {vbench_cli(export, dims, full_info)}")


def _vbench_evaluate(args: list[str]) -> None:
    from harness.vbench.evaluate import Settings, preflight, run
    from harness.vbench.scores import format_scores, read_results

    (folder,), overrides = _positionals(args, "vbench evaluate DIR [key=value ...]", 1)
    settings = Settings.from_config(compose(overrides))
    results = run(preflight(Path(folder), settings), settings)
    print(format_scores(read_results(results).scores))
    print(f"results in {results}; `refinery vbench ingest {folder}` puts them into the store")


def _vbench_aggregate(args: list[str]) -> None:
    from harness.vbench.scores import aggregate, format_scores, read_results, to_json

    (path,), rest = _positionals(args, "vbench aggregate PATH [format=table|json]", 1)
    form = _options("vbench aggregate", rest, ["format"]).get("format", "table")
    if form not in ("table", "json"):
        raise UsageError(f"format={form} is unknown; use format=table or format=json")
    summary = aggregate(read_results(Path(path)).scores, path)
    print(to_json(summary) if form == "json" else format_scores(summary.dimensions, summary))


def _vbench_ingest(args: list[str]) -> None:
    from harness.store import Store
    from harness.vbench.export import read_export
    from harness.vbench.ingest import ingest
    from harness.vbench.scores import read_results

    given, overrides = _positionals(args, "vbench ingest DIR [RESULTS] [key=value ...]", 1, optional=1)
    export = read_export(Path(given[0]))
    results = read_results(Path(given[1]) if len(given) > 1 else export.result_dir)
    cell, payload = ingest(export, results, Store(Path(compose(overrides).paths.store)))
    print(f"cell {cell.key}: {payload['metric']} scores ({', '.join(payload['values'])}) written to "
          f"{cell.path / 'scores'}; report them with report.metrics=[{payload['metric']}]")


def cmd_list(kind: str) -> None:
    from harness.registry import METHODS, METRICS

    registry = METHODS if kind == "methods" else METRICS
    for name in registry.names():
        print(f"{name:20s} {registry.get(name).description}")


COMMANDS = {"run": cmd_run, "sweep": cmd_sweep, "score": cmd_score, "report": cmd_report,
            "verify": cmd_verify, "bench": cmd_bench, "leaderboard": cmd_leaderboard,
            "train": cmd_train, "train-world": cmd_train_world, "train-reward": cmd_train_reward,
            "train-probe": cmd_train_probe, "weights": cmd_weights,
            "vbench": cmd_vbench}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = args[0], args[1:]
    try:
        if command in ("methods", "metrics"):
            cmd_list(command)
        elif command in COMMANDS:
            COMMANDS[command](rest)
        else:
            raise unknown_name("command", command, [*COMMANDS, "methods", "metrics"])
    except UsageError as exc:
        print(f"refinery: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
