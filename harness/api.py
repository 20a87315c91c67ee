"""Refinery's Python API: what every `refinery` command does, callable from a notebook or a package.

Each function takes the command line's Hydra overrides as a list of strings and returns pandas
DataFrames; bad input raises `harness.errors.UsageError` (one line naming the problem and the fix),
before anything is written. Imported as `refinery`:

    import refinery
    scores = refinery.run(["method=bon", "suite=world_smoke", "paths.store=/tmp/runs"])
    summary = refinery.report(["experiment=quickstart"])

Scores come in long form, one row per (cell, video, metric output): cell, the cell's labels, state,
video, prompt, seed, metric, value, higher_is_better.
"""
from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from omegaconf import DictConfig, OmegaConf

from harness.errors import UsageError
from harness.assets import CONFIG_DIR
from harness.experiment.plans import CellPlan, Experiment, compose, experiment, load_plugins, record, searchpath_overrides

if TYPE_CHECKING:
    import pandas as pd

    from harness.experiment.planner import SweepPlan, TrainMemory
    from harness.store.cells import Cell, CellRef, Damage, Store

__all__ = ["run", "sweep", "score", "report", "bench", "leaderboard", "export", "verify", "plans", "plan_cost",
           "scores"]


def plans(overrides: Sequence[str] = ()) -> list[CellPlan]:
    """The cells `overrides` expand to (an experiment's sweep, the command line's sweeps), with
    their composed configs and row labels; no model is loaded."""
    return experiment(list(overrides)).plans


def plan_cost(overrides: Sequence[str] = ()) -> "SweepPlan | TrainMemory":
    """`refinery plan`: what the cells of `overrides` will cost (videos, NFE, verifier calls, decodes,
    GPU-hours and wall time on `gpus=N`, storage, peak memory per GPU), or with a `train=` setting the
    peak memory per GPU of that training run; printed and returned. Nothing is loaded (no torch). A
    plan that cannot fit the GPU's memory raises UsageError with the estimate and what to change."""
    from harness.experiment import planner

    overrides = list(overrides)
    if planner.is_training(overrides):
        plan = planner.plan_train(overrides)
        print(planner.format_train(plan))
        planner.refuse_unfit(plan)
        return plan
    sweep_plan = planner.plan_sweep(overrides)
    print(planner.format_sweep(sweep_plan))
    return sweep_plan


def scores(overrides: Sequence[str] = ()) -> pd.DataFrame:
    """The stored scores of every cell of `overrides`, read from the store (nothing is computed)."""
    exp = experiment(list(overrides))
    return _collect(exp.store, exp.refs())


def _collect(store: Store, refs: list[CellRef]) -> pd.DataFrame:
    """The long form of the cells' scores, each cell once (a sweep may list a point twice); a label
    that is already a column (seed) is that column."""
    from harness.report.tables import SCORE_COLUMNS, collect
    from harness.store.cells import CellRef

    unique: dict[str, CellRef] = {}
    for ref in refs:
        unique.setdefault(ref.key, ref)
    return collect(store, [CellRef(r.key, {k: v for k, v in r.labels.items() if k not in SCORE_COLUMNS})
                           for r in unique.values()])


# ---------------------------------------------------------------------------------------------
# generation


def run(overrides: Sequence[str] = ()) -> pd.DataFrame:
    """Generate one cell (what is missing or damaged) and score what is stale; its scores."""
    from harness.experiment.config_schema import validate
    from harness.store.cells import CellRef

    cfg = compose(list(overrides))
    validate(cfg)  # a bad setting is refused before the generation code, and torch, is imported
    key = run_cell(cfg, list(overrides))
    return _collect(_store(cfg), [CellRef(key)])


def run_cell(cfg: DictConfig, overrides: list[str] | None = None) -> str:
    """One cell: generate, score, print its headline; the body of every sweep job too, whose
    overrides (None) Hydra knows. Returns the cell's key."""
    from harness.experiment.launchers import follow_sweep
    from harness.experiment.pipeline import generate, resolve_run
    from harness.experiment.pipeline import score as score_cell
    from harness.engine.devices import gpus_for
    from harness.experiment.workers import run_workers
    from harness.report.tables import headline_lines

    follow_sweep()
    load_plugins(cfg)
    overrides = _job_overrides() if overrides is None else overrides
    resolved = resolve_run(cfg)  # every bad input refused here, before any worker starts
    store = _store(cfg)
    resume = shlex.join(["refinery", "run", *overrides])
    shared = (0, 0)
    if cfg.run.workers > 1:
        gpus = gpus_for(resolved.model.device.type == "cuda", cfg.run.workers, "run.workers")
        shared = run_workers(overrides, gpus, resume)
    made = generate(resolved, store, resume=resume)  # what failed workers left, if anything
    made.videos, made.model_calls = made.videos + shared[0], made.model_calls + shared[1]
    record(CellPlan(overrides, cfg), resolved, store)
    cell = store.cell(resolved.key)
    scored = score_cell(cell, cfg.metric, Path(cfg.paths.weights))
    print(f"cell {resolved.key}: {made.videos} videos generated ({made.model_calls} model calls), "
          f"{len(resolved.items())} stored at {cell.path}; scored: {', '.join(scored) or 'up to date'}")
    print("\n".join(headline_lines(store, resolved.key, list(cfg.report.headline), resampling_of(cfg))))
    return resolved.key


def _job_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    # as the user gave them: the `++` is what sweep() added for Hydra's first composition (_forced);
    # without the shard number the sweep gave the job, which names no setting of the cell
    return [o[2:] if o.startswith("++") else o for o in HydraConfig.get().overrides.task
            if not o.startswith("launcher.shard=")]


def _sweep_job(cfg: DictConfig) -> None:
    run_cell(cfg)


def sweep(overrides: Sequence[str] = ()) -> pd.DataFrame:
    """Every cell of an experiment through the configured Hydra launcher (basic, joblib, SLURM), then
    the report's baseline cell when the sweep does not hold it; the scores of all of them."""
    import hydra

    from harness.experiment.launchers import check_launcher, mark_sweep, submitit_override, submitit_sweep_folder
    from harness.store.cells import CellRef

    overrides = list(overrides)
    exp = experiment(overrides)
    from harness.experiment.pipeline import resolve_run  # torch: after every setting is checked

    keys = {resolve_run(plan.cfg).key for plan in exp.plans}  # every cell valid before anything is written
    baseline = exp.baseline_plan()
    if baseline is not None and resolve_run(baseline.cfg).key in keys:
        baseline = None  # the sweep runs it anyway
    launcher, paths = compose(exp.plans[0].overrides, with_hydra=True).hydra.launcher, exp.cfg.paths
    check_launcher(launcher, Path(paths.store), paths.jobs)
    jobs = submitit_sweep_folder(launcher, paths.jobs, Path(paths.store), overrides)  # its pickles: not in the store
    store = exp.store
    for plan in exp.plans:  # every cell's store writable before the first job starts
        _store(plan.cfg)
    if jobs is not None:
        print(f"submitit's job scripts, pickles and logs: {jobs}/<job id>/")
    mark_sweep()
    shards = int(exp.cfg.launcher.shards)  # K writers of each cell: K jobs (array tasks) that share it
    fan_out = [f"launcher.shard=range(0,{shards})"] if shards > 1 else []
    with _argv(["--multirun", *_forced(overrides), *fan_out, *searchpath_overrides(overrides),
                *([submitit_override(jobs)] if jobs else [])]):  # hydra.main is Hydra's public entry to its launchers
        hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base=None)(_sweep_job)()
    refs = exp.refs()
    if baseline is not None:  # the cell the report's overheads are relative to
        refs.insert(0, CellRef(run_cell(baseline.cfg, baseline.overrides), {}))
    print(f"sweep done: {len(refs)} cells in {store.root.resolve()}")
    return _collect(store, refs)


def _forced(overrides: list[str]) -> list[str]:
    """The overrides as Hydra's multirun takes them: it composes one config with the default group
    options before the jobs, where a setting such as method.params.n=2 (for method=bon,sop) may not
    exist; `++` lets that composition add it. Every point was composed as given before, so no
    misspelled key gets through."""
    def nested_setting(o: str) -> bool:  # not a group choice (method=bon), not hydra's own
        key = o.partition("=")[0]
        return "." in key and not key.startswith(("+", "~", "hydra.")) and "/" not in key
    return [f"++{o}" if nested_setting(o) else o for o in overrides]


@contextmanager
def _argv(args: list[str]) -> Iterator[None]:
    before = sys.argv
    sys.argv = [before[0] if before else "refinery", *args]
    try:
        yield
    finally:
        sys.argv = before


def _store(cfg: DictConfig) -> Store:
    from harness.store.cells import Store

    return Store(Path(cfg.paths.store))


def resampling_of(cfg: DictConfig):
    from harness.report.resampling import Resampling

    return Resampling(**OmegaConf.to_container(cfg.report.stats))


# ---------------------------------------------------------------------------------------------
# scoring and reading


def score(overrides: Sequence[str] = ()) -> pd.DataFrame:
    """Rescore every stored cell of `overrides` with its metric config; the scores."""
    exp = experiment(list(overrides))
    from harness.experiment.pipeline import score as score_cell  # torch: after every setting is checked

    store, refs = exp.store, exp.refs()
    for plan, ref in zip(exp.plans, refs):
        computed = score_cell(store.cell(ref.key), plan.cfg.metric, Path(plan.cfg.paths.weights), force=True)
        print(f"cell {ref.key}: scored {', '.join(computed)}")
    return _collect(store, refs)


@dataclass
class _Reportable:
    exp: Experiment
    refs: list[CellRef]
    cells: list[tuple[CellRef, DictConfig]]
    baseline: tuple[str, DictConfig] | None


def _reportable(overrides: list[str]) -> _Reportable:
    exp = experiment(overrides)
    refs = exp.refs()
    cells = list(zip(refs, (plan.cfg for plan in exp.plans)))  # before the baseline may join refs
    baseline = exp.baseline(refs)
    return _Reportable(exp, refs, cells, baseline)


def report(overrides: Sequence[str] = ()) -> pd.DataFrame:
    """Write the experiment's report (Markdown, CSV, LaTeX, HTML, figures) from the store; its
    summary, one row per cell x metric (report.csv), with the written files in `.attrs["files"]`."""
    from harness.report.exports import read_csv_export
    from harness.report.write import write_report
    from harness.report.timing import read_timings

    overrides = list(overrides)
    r = _reportable(overrides)
    cfg, store = r.exp.cfg, r.exp.store
    for ref in r.refs:  # a report never goes on with fewer videos than a cell has (by size and time)
        store.cell(ref.key).refuse_damage(full=False)
    if r.baseline and cfg.report.timing:
        _bench(r.cells, r.baseline, store)
    out = _report_out(Path(cfg.paths.reports), r.exp.name, overrides)
    hacking = cfg.report.get("reward_hacking")
    paths = write_report(
        store, r.refs, out, title=f"Refinery report: {r.exp.name}", metrics=list(cfg.report.metrics),
        headline=list(cfg.report.headline), baseline=r.baseline[0] if r.baseline else None,
        hacking=(hacking.reward, list(hacking.held_out)) if hacking else None, resampling=resampling_of(cfg),
        timings=read_timings([store.root], r.baseline[0], [x.key for x in r.refs]) if r.baseline else None,
        generation_timings=frozenset(cfg.report.generation_timings), gallery_prompts=int(cfg.report.gallery),
        latex=OmegaConf.to_container(cfg.report.latex) if cfg.report.get("latex") else None)
    print(f"report written to {out.resolve()}/ ({', '.join(p.name for p in paths.values())})\n"
          f"open {paths['report.html'].resolve()}")
    return _with_files(read_csv_export(paths["report.csv"]), paths)


def _report_out(root: Path, name: str, overrides: list[str]) -> Path:
    """The report's folder (harness.report.write.report_folder), refused in one line when no file
    can be written there (a read-only folder or file system), before any file is."""
    from harness.experiment.resources import check_creatable
    from harness.report.write import report_folder

    out = report_folder(root, name, overrides)
    check_creatable(out if out.exists() else root, "paths.reports")
    return out


def _with_files(frame: pd.DataFrame, paths: dict[str, Path]) -> pd.DataFrame:
    frame.attrs["files"] = {name: str(p.resolve()) for name, p in paths.items()}
    return frame


def bench(overrides: Sequence[str] = ()) -> pd.DataFrame:
    """The timing pass: every cell against the report's baseline, interleaved in this process; one
    row per timed cell (fps, base_fps, ratio and its pairwise range, cpu_ratio, loaded)."""
    r = _reportable(list(overrides))
    if r.baseline is None:
        raise UsageError("refinery bench times cells against report.baseline, which is not set; "
                         "set it, e.g. report.baseline='method=base'")
    return _bench(r.cells, r.baseline, r.exp.store)


def _bench(cells: list, baseline: tuple[str, DictConfig], store: Store) -> pd.DataFrame:
    import pandas as pd

    from harness.experiment.pipeline import resolve_run
    from harness.report.timing import time_against, write_timing

    options = baseline[1].report.bench
    if options.threads:  # e.g. 1 on a shared machine: no thread of the pass waits on a descheduled sibling
        import torch

        torch.set_num_threads(int(options.threads))
    base = resolve_run(baseline[1])
    timed = [(ref, cfg) for ref, cfg in cells if ref.key != baseline[0]]
    print(f"timing pass: {len(timed)} cells against {baseline[0]}, {options.repeats} repeats of "
          f"{options.batch} videos each, after {options.warmup} warm-up run(s)")
    rows = []
    for ref, cfg in timed:
        timing = time_against(resolve_run(cfg), base, options.batch, options.repeats, options.warmup)
        write_timing(store.root, timing)
        load = f"; LOADED: load {max(timing.load)} on {timing.cores} cores" if timing.loaded else ""
        print(f"  {ref.name()}: {timing.fps:.1f} FPS, base {timing.base_fps:.1f} FPS, "
              f"FPS ÷ base {timing.ratio:.3f} (pairwise {timing.ratio_low:.3f}–{timing.ratio_high:.3f}; "
              f"CPU time {timing.cpu_ratio:.3f}{load})")
        rows.append({"cell": ref.key, **ref.labels, "fps": timing.fps, "base_fps": timing.base_fps,
                     "ratio": timing.ratio, "ratio_low": timing.ratio_low, "ratio_high": timing.ratio_high,
                     "cpu_ratio": timing.cpu_ratio, "loaded": timing.loaded})
    return pd.DataFrame(rows)


def leaderboard(overrides: Sequence[str] = ()) -> pd.DataFrame:
    """`experiment=a,b [...]`: the cells of every named experiment (each composed with the other
    overrides), read from paths.store and report.leaderboard.stores, ranked on one frozen suite;
    the leaderboard's table (leaderboard.csv), with the written files in `.attrs["files"]`."""
    from harness.report.exports import read_csv_export
    from harness.report.leaderboard import Stores, write_leaderboard
    from harness.store.cells import Store
    from harness.report.timing import read_timings

    named = [o.partition("=")[2] for o in overrides if o.partition("=")[0] == "experiment"]
    rest = [o for o in overrides if o.partition("=")[0] != "experiment"]
    names = [e for value in named for e in value.split(",") if e]
    if not names:
        raise UsageError("name the experiments to rank, e.g. refinery leaderboard experiment=training_free,table2_reward")
    exps = [experiment([f"experiment={name}", *rest]) for name in names]
    plans, refs = [], []
    for exp in exps:
        for plan, ref in zip(exp.plans, exp.refs()):
            known = next((r for r in refs if r.key == ref.key), None)
            if known is None:
                plans.append(plan)
                refs.append(ref)
            else:  # a cell of two experiments (their shared baseline): one row, both labels
                known.labels = {**ref.labels, **known.labels}
    first = Experiment(exps[0].overrides, plans)
    baseline = first.baseline(refs)
    cfg = first.cfg
    if baseline is None:
        raise UsageError("a leaderboard ranks against report.baseline, which is not set; set it, e.g. "
                         "report.baseline='method=base'")
    stores = Stores([Store(Path(p)) for p in [cfg.paths.store, *cfg.report.leaderboard.stores]])
    out = _report_out(Path(cfg.paths.reports), "leaderboard_" + "+".join(names), rest)
    paths = write_leaderboard(stores, refs, out, f"Refinery leaderboard: {', '.join(names)}",
                              list(cfg.report.leaderboard.metrics or cfg.report.headline), baseline[0],
                              resampling=resampling_of(cfg),
                              timings=read_timings(stores.roots, baseline[0], [r.key for r in refs]),
                              generation_timings=frozenset(cfg.report.generation_timings))
    print(f"leaderboard written to {out.resolve()}/ ({', '.join(p.name for p in paths.values())})")
    return _with_files(read_csv_export(paths["leaderboard.csv"]), paths)


def export(overrides: Sequence[str] = ()) -> pd.DataFrame:
    """Stored videos as one mp4 or GIF (`out=FILE.mp4|.gif`, the format from its suffix): the cell of
    the other overrides, its videos one after another; one of its samples with `video=I` or
    `prompt=P [seed=S]`; or with `gallery=true` the report's gallery (rows: the report's cells,
    columns: `report.gallery` prompts). `fps` (default vbench.fps), `crf` (mp4, default vbench.crf)
    and `scale` (whole-multiple enlargement; default to about 128 pixels a video) shape the file.
    One row per stored video placed (cell, video, prompt, seed, its first frame, gallery row and
    column), the written file in `.attrs["files"]`."""
    from dataclasses import asdict

    import pandas as pd

    from harness.report.export import export_videos, split_options

    options, rest = split_options(list(overrides))
    if options.gallery:  # the report's rows, its baseline included
        reportable = _reportable(rest)
        exp, refs = reportable.exp, reportable.refs
    else:
        exp = experiment(rest)
        refs = exp.refs()
    cfg = exp.cfg
    unique = list({ref.key: ref for ref in refs}.values())
    for ref in unique:  # no export of a video the manifest does not vouch for
        exp.store.cell(ref.key).refuse_damage(scores=False)
    placed = export_videos(exp.store, unique, options, fps=options.fps or int(cfg.vbench.fps),
                           crf=int(cfg.vbench.crf) if options.crf is None else options.crf,
                           gallery_prompts=int(cfg.report.gallery))
    return _with_files(pd.DataFrame([asdict(p) for p in placed]), {options.out.name: options.out})


# ---------------------------------------------------------------------------------------------
# integrity


def verify(overrides: Sequence[str] = ()) -> pd.DataFrame:
    """Check the cells of `overrides` (with no setting but paths.*, every cell of the store): one row
    per damaged or missing file (cell, file, problem, fix), each also printed with its repair, and one
    line per cell that holds the same work as another (harness.experiment.spec_form). Reading a whole
    store needs no model."""
    import pandas as pd

    from harness.experiment.spec_form import same_work
    from harness.store.cells import Store

    overrides = list(overrides)
    listed = [o for o in overrides if not o.lstrip("+~").startswith("paths.")]
    root = Path(compose(overrides).paths.store).expanduser()
    if not (root / "cells").is_dir():  # checked before Store(), which would create it
        raise UsageError(f"no store at {root.resolve()} (paths.store): nothing to verify; name the folder a "
                         "`refinery run` or `sweep` wrote, e.g. paths.store=runs")
    store = Store(root)
    cells = [store.cell(ref.key) for ref in experiment(overrides).refs()] if listed else store.cells()
    found = [_print_damage(cell, listed=bool(listed)) for cell in cells]
    rows = [{"cell": cell.key, "file": d.file, "problem": d.problem, "fix": cell.fix(d.file)}
            for cell, (damage, _) in zip(cells, found) for d in damage]
    states = [state for _, state in found]
    duplicates = same_work(store.cells(), _normal_key(overrides))
    for line in duplicates:
        print(line)
    print(f"{count(len(cells), 'cell')} checked in {store.root.resolve()}: {count(len(rows), 'damaged file')}"
          f", {states.count('interrupted')} interrupted, {states.count('missing')} not run"
          + (f", {count(len(duplicates), 'duplicate')} (listed above)" if duplicates else ""))
    return pd.DataFrame(rows, columns=["cell", "file", "problem", "fix"])


def _normal_key(overrides: list[str]) -> Callable[[dict], str | None]:
    """spec -> the key the current code gives its work: the spec with its timesteps in normal form for
    the default step list of the model config of its model's name (None: no such config)."""
    from harness.experiment.spec_form import normal_timesteps
    from harness.store.cells import cell_key

    paths = [o for o in overrides if o.lstrip("+~").startswith(("paths.", "plugins"))]
    unknown = object()
    defaults: dict[str, object] = {}

    def key(spec: dict) -> str | None:
        name = spec.get("model", {}).get("name")
        if name not in defaults:
            try:
                defaults[name] = (compose([*paths, f"model={name}"]).model.get("sampling") or {}).get("timesteps")
            except UsageError:
                defaults[name] = unknown
        if defaults[name] is unknown:
            return None
        s = spec["sampler"]
        normal = normal_timesteps(s["steps"], s.get("timesteps"), defaults[name])
        return cell_key({**spec, "sampler": {**s, "timesteps": list(normal) if normal else None}})
    return key


def count(n: int, thing: str) -> str:
    """'1 cell', '2 cells'."""
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
    if not damage and cell.stamp_times():
        print(f"cell {cell.key}: file times added to its manifest (written before 2026-12-07): run and report "
              "now recognise it by size and time; verify still hashes every byte")
    return damage, state
