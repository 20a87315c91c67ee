"""Prompt suites: where a cell's prompts come from (sweeps/suite/*.yaml, `source`).

- `world_eval`: the shapes world's frozen held-out prompts, tagged with the dimensions they test;
- `list`: the prompts listed in `suite.prompts`;
- `vbench`: VBench's standard prompt suite, read from the `VBench_full_info.json` the official package
  ships (`suite.full_info`), each prompt tagged with its VBench dimensions, optionally only those of
  `suite.dimensions`; with 5 samples per prompt its cells export in `vbench.mode=vbench_standard`;
- `prompt_file`: one prompt per line of `suite.path` (blank lines skipped), e.g. training or
  evaluation prompts such as VidProS or MovieGenBench.
Whether the model can take each prompt (the toy's vocabulary, a text encoder's length) is the
model's to check (VideoModel.validate_prompts), before any compute.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness.errors import UsageError, unknown_name

SOURCES = ("world_eval", "list", "vbench", "prompt_file")
# The suite keys each source reads, beyond name, version, source and samples_per_prompt (which the root
# config reads), and a shipped suite of that source: a key the source does not read is refused, never
# ignored (`suite.prompts=[...]` on world_eval would otherwise generate its 42 frozen prompts).
_READS = {"world_eval": (), "list": ("prompts",), "vbench": ("full_info", "dimensions"), "prompt_file": ("path",)}
_SHIPPED = {"world_eval": "suite=world_eval", "list": "suite=world_smoke", "vbench": "suite=vbench",
            "prompt_file": "suite=prompt_file"}
_COMMON = ("name", "version", "source", "samples_per_prompt")


@dataclass(frozen=True)
class Suite:
    prompts: list[str]
    tags: list[list[str]]


def read_suite(suite: DictConfig) -> Suite:
    source = suite.get("source")
    if source not in SOURCES:
        raise unknown_name("suite.source", str(source), SOURCES)
    _refuse_unread(suite, source)
    read = {"world_eval": _world_eval, "list": _listed, "vbench": _vbench, "prompt_file": _prompt_file}[source]
    result = read(suite)
    if not result.prompts:
        raise UsageError(f"suite {suite.get('name')!r} has no prompts; list some under suite.prompts, "
                         "or choose another suite")
    return result


def _refuse_unread(suite: DictConfig, source: str) -> None:
    for key in suite:
        if key in _COMMON or key in _READS[source] or suite.get(key) is None:
            continue
        readers = [s for s, keys in _READS.items() if key in keys]
        choose = f"choose a suite that reads it ({' or '.join(_SHIPPED[s] for s in readers)}) or " if readers else ""
        raise UsageError(f"suite.{key} is set, but suite {suite.get('name')!r} (source {source}) does not read it "
                         f"and would ignore it; {choose}leave suite.{key} out")


def _world_eval(suite: DictConfig) -> Suite:
    from harness.world.prompts import eval_prompts

    rows = eval_prompts()
    return Suite([r.text for r in rows], [list(r.tags) for r in rows])


def _listed(suite: DictConfig) -> Suite:
    prompts = OmegaConf.to_container(suite.prompts) if suite.get("prompts") is not None else []
    if not isinstance(prompts, list) or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise UsageError(f"suite.prompts={prompts!r} is not a list of prompts; give a list, e.g. "
                         "'suite.prompts=[a red circle bouncing]'")
    return Suite(list(prompts), [[] for _ in prompts])


def _vbench(suite: DictConfig) -> Suite:
    from harness.vbench.scores import read_full_info

    if not suite.get("full_info"):
        raise UsageError("suite=vbench needs VBench's prompt suite: set vbench.full_info to the "
                         "VBench_full_info.json inside the vbench package (vbench/VBench_full_info.json)")
    entries: dict[str, set[str]] = {}
    for prompt, dims in read_full_info(Path(str(suite.full_info))):
        entries.setdefault(prompt, set()).update(dims)
    wanted = set(OmegaConf.to_container(suite.dimensions)) if suite.get("dimensions") else None
    if wanted is not None:
        known = set().union(*entries.values())
        unknown = sorted(wanted - known)
        if unknown:
            raise unknown_name("VBench dimension", unknown[0], known)
        entries = {p: d for p, d in entries.items() if d & wanted}
    return Suite(list(entries), [sorted(d) for d in entries.values()])


def _prompt_file(suite: DictConfig) -> Suite:
    path = Path(str(suite.get("path") or ""))
    if not suite.get("path") or not path.is_file():
        raise UsageError(f"prompt file {path} is missing; set suite.path to a text file with one prompt per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"prompt file {path} cannot be read as UTF-8 text ({exc}); give a plain text file") from None
    prompts = [line.strip() for line in lines if line.strip()]
    return Suite(prompts, [[] for _ in prompts])


def read_prompt_file(path: Path) -> list[str]:
    """The prompts of a one-prompt-per-line file (training prompts)."""
    return _prompt_file(OmegaConf.create({"path": str(path)})).prompts
