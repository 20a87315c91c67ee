"""The normal form of a run spec: one cell key for one piece of work.

A cell's key hashes its run spec (harness.store.cells.cell_key), so two ways of writing the same
work must give the same spec. The sampler is where they differ: Self-Forcing's step list
1000/750/500/250 is both the toy's own `model.sampling.timesteps` and what `sampler.steps=4` asks
for (evenly spaced), and was written out in one spec and `timesteps: null` in the other. The rule,
chosen so that every spec already written in normal form keeps its key:

- a step list equal to the model's own default list is written out, as the model config lists it
  (the default `refinery run` cell and every method experiment's base cell keep their keys);
- any other evenly spaced list 1000 (1 - i / steps) is written `null` (implied by `steps`);
- any other list is written out.

Everything else in the spec is already resolved before it is hashed: the method's full parameter
dataclass (a default written out or left out gives the same params), the model's dtype and device,
shift and warp taken from the model's defaults where the sampler leaves them null.

The suite's name stays in the key. The name chooses what a cell's records hold besides prompts (the
suite's tags: VBench dimensions, the shapes world's tested dimensions), reports, the leaderboard and
`comparable_groups` read it from the cell's spec as the identity of a frozen suite, and every spec
carries one: taking it out of the hash would change the key of every existing cell. A renamed suite
over the same prompts is therefore a new cell; `refinery verify` names such pairs (`same_work`).

SPEC_FORM numbers this normal form; the store's plan records (harness.experiment.plans) include it,
so a record made under another form is resolved again rather than trusted.
"""
from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from harness.store.files import canonical_json

if TYPE_CHECKING:
    from harness.store.cells import Cell

SPEC_FORM = 2  # 1: the spec as pipeline.resolve_run wrote it before this module


def _even(steps: int) -> list[float]:
    from harness.engine.samplers import Sampler

    return Sampler(steps=steps).step_list


def normal_timesteps(steps: int, timesteps: Sequence[float] | None,
                     model_default: Sequence[float] | None) -> tuple[float, ...] | None:
    """sampler.timesteps in normal form (module docstring) for a sampler of `steps` steps."""
    listed = [float(t) for t in timesteps] if timesteps is not None else _even(steps)
    if model_default is not None and listed == [float(t) for t in model_default]:
        return tuple(listed)
    return None if listed == _even(steps) else tuple(listed)


def work_of(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with its step list always written out: equal for two specs of the same work, whatever
    form each was written in (what `refinery verify` compares)."""
    sampler = spec.get("sampler")
    if not isinstance(sampler, dict) or not isinstance(sampler.get("steps"), int):
        return spec
    steps, listed = sampler["steps"], sampler.get("timesteps")
    return {**spec, "sampler": {**sampler, "timesteps": [float(t) for t in listed] if listed else _even(steps)}}


def _without_suite_name(spec: dict[str, Any]) -> dict[str, Any]:
    suite = spec.get("suite")
    return {**spec, "suite": {k: v for k, v in suite.items() if k != "name"}} if isinstance(suite, dict) else spec


def same_work(cells: list[Cell], normal_key: Callable[[dict], str | None]) -> list[str]:
    """One line per cell that holds the same work as another cell of the store, with the command
    that removes the redundant one. `normal_key(spec)`: the key the current code gives that work
    (None where it cannot tell), which is the cell to keep."""
    groups: dict[str, list[tuple[Cell, dict]]] = {}
    for cell in cells:
        spec = _spec_quietly(cell)
        if spec is not None:
            groups.setdefault(canonical_json(work_of(spec)), []).append((cell, spec))
    lines = []
    for members in groups.values():
        if len(members) > 1:
            lines += _duplicate_lines(members, normal_key(members[0][1]))
    renamed: dict[str, list[tuple[Cell, dict]]] = {}
    for members in groups.values():
        renamed.setdefault(canonical_json(_without_suite_name(work_of(members[0][1]))), []).append(members[0])
    for members in renamed.values():
        if len(members) > 1:
            names = ", ".join(f"{c.key} ({s['suite'].get('name')!r})" for c, s in members)
            lines.append(f"cells {names} hold the same videos under other suite names; the name is part "
                         "of a cell's key (docs/sweeps.md, 'Cell keys'): run one suite name to share them")
    return lines


def _duplicate_lines(members: list[tuple[Cell, dict]], keep: str | None) -> list[str]:
    keys = [c.key for c, _ in members]
    if keep not in keys:
        return [f"cells {', '.join(keys)} hold the same work; keep one and remove the others with `rm -r CELL`"]
    kept = next(c for c, _ in members if c.key == keep)
    resume = kept.resume_command() or "refinery run with the settings that make it"
    finish = "" if kept.is_complete() else f"finish it first (`{resume}`), then "
    return [f"cell {c.key} holds the same work as cell {keep}, the key runs now use: {finish}remove it with "
            f"`rm -r {shlex.quote(str(c.path))}`" for c, _ in members if c.key != keep]


def _spec_quietly(cell: Cell) -> dict | None:
    from harness.errors import UsageError

    try:
        return cell.spec()
    except UsageError:
        return None  # a damaged spec is verify's damage report's business
