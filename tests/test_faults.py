"""Fault injection at every write of `run`, `score` and `report` (tests/faults.py says how).

The normal suite checks a handful of points, chosen deterministically; `make test-faults`
(REFINERY_FAULTS=all) checks every point with every fault: a test per (command, point, fault).
"""
import os
import tempfile
from pathlib import Path

import pytest

from faults import COMMANDS, KILL, check, reference, sample

EVERY_POINT = os.environ.get("REFINERY_FAULTS") == "all"


def _faults(index: int) -> list[str]:
    """ENOSPC, one of EACCES and EROFS (in turn by point), and a kill."""
    return ["enospc", "eacces" if index % 2 == 0 else "erofs", KILL]


def pytest_generate_tests(metafunc):
    if "every_point" not in metafunc.fixturenames:
        return
    if not EVERY_POINT:
        metafunc.parametrize("every_point", [pytest.param(None, marks=pytest.mark.skip(
            reason="the exhaustive sweep runs in `make test-faults` (REFINERY_FAULTS=all)"))])
        return
    with tempfile.TemporaryDirectory() as tmp:  # the points, enumerated by an uninterrupted run
        points = reference(Path(tmp)).points
    cases = [(c, p, f) for c in COMMANDS for p in points[c] for f in _faults(p.index)]
    metafunc.parametrize("every_point", cases, ids=[f"{c}-{p.index}-{p.kind}-{f}" for c, p, f in cases])


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return reference(tmp_path_factory.mktemp("reference"))


@pytest.mark.slow  # builds the reference: 3 commands
def test_the_commands_write_what_the_sweep_expects(ref):
    """The enumeration sees every kind of write: temp files, renames and locks of each command, the
    cell's files, the .plans entry and the report's."""
    run = {(p.kind, Path(p.path).parent.name if p.kind != "lock" else Path(p.path).name) for p in ref.points["run"]}
    assert {("lock", ".lock"), ("write", "videos"), ("rename", "records"), ("write", "scores"),
            ("rename", ".plans")} <= run, run
    assert {p.kind for p in ref.points["score"]} == {"lock", "write", "rename"}
    assert any(p.path.endswith("report.html") for p in ref.points["report"])
    (html,) = [data for name, data in ref.outcomes["report"].items() if name.endswith("report.html")]
    assert html.count(b"<written>") == 1  # the date and commit of writing, left out of the comparison


@pytest.mark.slow
@pytest.mark.parametrize("command, count", [("run", 4), ("score", 2), ("report", 2)])
def test_a_sample_of_faults_holds(ref, tmp_path, command, count):
    faults = ["enospc", KILL, "erofs", KILL, "eacces"]
    for n, (point, fault) in enumerate(sample(ref.points[command], faults, count)):
        problems = check(ref, command, point, fault, tmp_path / str(n))
        assert not problems, f"{command} {fault} at {point}: {problems}"


def test_every_fault_holds(ref, tmp_path, every_point):
    command, point, fault = every_point
    problems = check(ref, command, point, fault, tmp_path)
    assert not problems, f"{command} {fault} at {point}: {problems}"
