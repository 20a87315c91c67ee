"""README.md and the docs site (docs/, mkdocs.yml): README stays short and keeps the two commands, every
shell example names a real command whose overrides Hydra parses (the cheap ones run), and the site
builds with `mkdocs build --strict`."""
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from harness.cli import parser  # the CLI's argparse builder: its sub-commands are the commands

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
PREFIXES = ("refinery ", ".venv/bin/refinery ")
WORD_COMMANDS = {"list", "weights", "vbench"}  # their first word is a sub-command, not an override


def shell_examples(path: Path) -> list[tuple[str, list[str]]]:
    """(where, words after `refinery`) of every line in a ```-fenced block that starts with a
    `refinery` command; a line ending in a backslash continues on the next."""
    examples, fenced, pending = [], False, None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fenced, pending = not fenced, None
            continue
        if not fenced:
            continue
        if pending is not None:
            pending[1].append(stripped)
        elif stripped.startswith(PREFIXES):
            pending = (f"{path.relative_to(ROOT)}:{number}", [stripped])
        if pending is not None and not stripped.endswith("\\"):
            text = " ".join(part.rstrip("\\") for part in pending[1])
            words = shlex.split(text, comments=True)
            examples.append((pending[0], words[1:]))
            pending = None
    return examples


EXAMPLES = [example for page in PAGES for example in shell_examples(page)]


def is_cheap(words: list[str]) -> bool:
    return words[:1] in (["--help"], ["--version"], ["list"]) or "--help" in words


@cache
def commands() -> frozenset[str]:
    sub = next(a for a in parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return frozenset(sub.choices)


def test_readme_is_short_and_has_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    assert "make demo" in text and "make test" in text


def test_the_pages_have_shell_examples():
    assert len(EXAMPLES) > 20 and any(where.startswith("README.md") for where, _ in EXAMPLES)


@pytest.mark.parametrize("where,words", [e for e in EXAMPLES if not is_cheap(e[1])], ids=lambda v: str(v)[:60])
def test_every_shell_example_names_a_command_and_its_overrides_parse(where, words):
    known = commands()
    assert words and words[0] in known, f"{where}: `refinery {' '.join(words)}` names no command of {sorted(known)}"
    overrides = words[2:] if words[0] in WORD_COMMANDS else words[1:]  # list experiments, weights check ...
    if words[0] == "vbench":
        overrides = [w for w in overrides if "=" in w]  # vbench export OUT: a path before the overrides
    OverridesParser.create().parse_overrides(overrides)  # raises on an override Hydra cannot parse


def test_an_unquoted_value_with_equals_does_not_parse():
    """Why the docs write "report.baseline='method=base'" with quotes."""
    from hydra.errors import OverrideParseException

    with pytest.raises(OverrideParseException):
        OverridesParser.create().parse_overrides(["report.baseline=method=base"])
    OverridesParser.create().parse_overrides(["report.baseline='method=base'"])


@pytest.mark.slow
@pytest.mark.parametrize("where,words", [e for e in EXAMPLES if is_cheap(e[1])], ids=lambda v: str(v)[:60])
def test_the_cheap_shell_examples_run(where, words):
    done = subprocess.run([sys.executable, "-m", "harness.cli", *words], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"{where}: {done.stderr}"
    assert done.stdout.strip()


@pytest.mark.slow
def test_the_docs_site_builds_strictly(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (the `docs` extra: pip install -e '.[docs]'; `make test` installs it)")
    done = subprocess.run([mkdocs, "build", "--strict", "-q", "-d", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "index.html").is_file()
