"""Fault injection at every write, as SQLite tests its I/O (tests/test_faults.py, `make test-faults`).

A command (`refinery run`, `score` or `report`, run in this process through harness.cli.main) is run
once with every write point recorded: each temp file that harness.store.files.atomic_write fills, each
os.replace (the rename that publishes it), each lock file that harness.store.lease creates. Then, for
one point at a time, the command runs again from the same start with a fault there:

- ENOSPC, EACCES or EROFS raised at that point and at every later one (a full or read-only disk stays
  so until someone fixes it; a write cut short leaves half its temp file behind first);
- a kill: os._exit at that point, in a forked child (a lock just created stays behind, a temp file
  stays half written or whole but unrenamed).

`check` then holds the command to the store's promises: a one-line message and exit code 2 (for a
raised fault), no cell claiming to run, and after a rerun with the fault gone, the bytes of an
uninterrupted run and no debris anywhere (temp files, locks, probes, .sweeps).

Forking needs a process whose torch never started a thread pool: the commands run with threads=1.
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import harness.store.files
import harness.store.lease
from harness.store.cells import Store
from harness.store.files import TEMP_NAME
from conftest import ROOT
from stores import contents

# A cell of 4 videos in 2 batches, scored with the cheap metrics: about 2 s per command here.
CELL = ["suite=world_smoke", "samples_per_prompt=1", "model.num_chunks=2", "sampler.steps=2", "batch_size=2",
        "threads=1", "~metric.world_bench", "~metric.world_alignment",
        "report.metrics=[temporal_flicker,dynamics]", "report.headline=[dynamics.ssim]"]
COMMANDS = ("run", "score", "report")
KILL = "kill"
RAISED = {"enospc": errno.ENOSPC, "eacces": errno.EACCES, "erofs": errno.EROFS}
KILLED = 137  # the exit status of a killed process, as a shell reports it
_BAR = re.compile(r"^.*\| *\d+/\d+ \[[^]]*\]")  # a tqdm progress bar's refresh, not a message
# harness/report/page.py's run metadata: when, and from which source tree, a report was written
_WRITTEN_AT = re.compile(rb"<dt>generated</dt><dd>[^<]*</dd>\n<dt>git commit</dt><dd>[^<]*</dd>")


@dataclass(frozen=True)
class Point:
    index: int
    kind: str  # write | rename | lock
    path: str  # relative to the workspace


class _LeaseOs:
    """The os module as harness.store.lease sees it, with lock files created through the injector."""

    def __init__(self, injector: Injector):
        self._injector = injector

    def __getattr__(self, name: str):
        return getattr(os, name)

    def open(self, path, flags, *args):
        self._injector.lock_point(path)
        return os.open(path, flags, *args)


class Injector:
    """Wraps the write primitives; records every point reached and injects `fault` from point `at` on
    (a kill at `at` only)."""

    def __init__(self, root: Path, at: int | None = None, fault: str | None = None):
        self.root, self.at, self.fault = root, at, fault
        self.points: list[Point] = []
        self._kill_after_lock = False

    def _hit(self, kind: str, path: str | os.PathLike) -> str | None:
        """Record a point; the fault to inject there, if any."""
        index = len(self.points)
        try:
            shown = str(Path(path).resolve().relative_to(self.root.resolve()))
        except ValueError:
            shown = str(path)
        self.points.append(Point(index, kind, shown))
        if self.at is None or index < self.at or (self.fault == KILL and index > self.at):
            return None
        return self.fault

    @staticmethod
    def _inject(fault: str, path: str | os.PathLike) -> None:
        if fault == KILL:
            os._exit(KILLED)
        code = RAISED[fault]
        raise OSError(code, os.strerror(code), str(path))

    def lock_point(self, path: str | os.PathLike) -> None:
        """A lock file about to be created: a raised fault fails its creation; a kill comes once it is
        written (faulty_try_create), as when a holder dies."""
        fault = self._hit("lock", path)
        self._kill_after_lock = fault == KILL
        if fault and fault != KILL:
            self._inject(fault, path)

    @contextlib.contextmanager
    def installed(self) -> Iterator[Injector]:
        files, lease = harness.store.files, harness.store.lease
        atomic_write, replace, try_create = files.atomic_write, os.replace, lease._try_create

        def faulty_atomic_write(path, write):
            def faulty_write(tmp):
                write(tmp)
                fault = self._hit("write", path)
                if fault:
                    os.truncate(tmp, tmp.stat().st_size // 2)  # the write was cut short
                    self._inject(fault, path)
            atomic_write(path, faulty_write)

        def faulty_replace(src, dst, **kw):
            fault = self._hit("rename", dst)
            if fault:
                self._inject(fault, dst)
            replace(src, dst, **kw)

        def faulty_try_create(path, owner):
            created = try_create(path, owner)
            if self._kill_after_lock:
                self._inject(KILL, path)
            return created

        saved = [(files, "atomic_write", atomic_write), (os, "replace", replace),
                 (lease, "_try_create", try_create), (lease, "os", os)]
        files.atomic_write, os.replace = faulty_atomic_write, faulty_replace
        lease._try_create, lease.os = faulty_try_create, _LeaseOs(self)
        try:
            yield self
        finally:
            for module, name, value in saved:
                setattr(module, name, value)


def command_args(command: str, store: str = "store") -> list[str]:
    """Relative store and reports paths (commands run in their workspace), so that every workspace's
    .plans entries and report folder have the same names and bytes; the repository's weights folder."""
    return [command, *CELL, f"paths.store={store}", "paths.reports=reports", f"paths.weights={ROOT / 'weights'}"]


def run_command(command: str, work: Path, injector: Injector | None = None,
                store: str = "store") -> tuple[int, list[str]]:
    """Exit code and the lines on stderr (progress bars left out) of one command, in this process, in
    the folder `work`."""
    from harness.cli import main

    err = io.StringIO()
    work.mkdir(parents=True, exist_ok=True)
    with contextlib.chdir(work), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        with injector.installed() if injector else contextlib.nullcontext():
            code = main(command_args(command, store))
    parts = [_BAR.sub("", part) for line in err.getvalue().splitlines() for part in line.split("\r")]
    return code, [part for part in parts if part.strip()]


def killed_command(command: str, work: Path, injector: Injector) -> int:
    """Run the command in a forked child that the injector kills; its exit status."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into the test runner
        try:
            code, _ = run_command(command, work, injector)
        finally:
            os._exit(99)  # reached only when the kill point was never reached
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under folder by its relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def debris(work: Path) -> list[str]:
    """What no finished command may leave: temp files, locks and their guards, probes, sweep folders."""
    return sorted(str(p.relative_to(work)) for p in work.rglob("*")
                  if TEMP_NAME.fullmatch(p.name) or p.name.startswith((".lock", ".probe")) or p.name == ".sweeps")


def outcome(command: str, work: Path) -> dict[str, object]:
    """What must equal an uninterrupted run's: the store's deterministic contents (measured times left
    out, tests/stores.py) and .plans entries after `run` and `score`; the report's bytes after `report`,
    but for the date and source tree (git commit) report.html says it was written with."""
    if command == "report":
        return {name: _WRITTEN_AT.sub(b"<written>", data) for name, data in tree(work / "reports").items()}
    return {**contents(work / "store"), **{f".plans/{k}": v for k, v in tree(work / "store" / ".plans").items()}}


@dataclass
class Reference:
    """An uninterrupted run of each command from its start, and the write points each made."""

    root: Path
    points: dict[str, list[Point]]
    outcomes: dict[str, dict[str, object]]

    def start(self, command: str, work: Path) -> None:
        """Set `work` up as the command's start: nothing for run; the run's store for score and report."""
        if command != "run":
            shutil.copytree(self.root / "run" / "store", work / "store")


def reference(root: Path) -> Reference:
    points, outcomes = {}, {}
    for command in COMMANDS:
        work = root / command
        if command != "run":
            shutil.copytree(root / "run" / "store", work / "store")
        injector = Injector(work)
        code, lines = run_command(command, work, injector)
        assert code == 0, lines
        points[command], outcomes[command] = injector.points, outcome(command, work)
    return Reference(root, points, outcomes)


def check(ref: Reference, command: str, point: Point, fault: str, work: Path) -> list[str]:
    """Run `command` with `fault` at `point`, then again without; what broke a promise (empty: held)."""
    ref.start(command, work)
    injector = Injector(work, point.index, fault)
    problems = []
    if fault == KILL:
        code = killed_command(command, work, injector)
        if code != KILLED:
            problems.append(f"the kill point was not reached (exit {code})")
    else:
        code, lines = run_command(command, work, injector)
        if code != 2 or len(lines) != 1 or not lines[0].startswith("refinery: error: cannot write "):
            problems.append(f"exit {code} with {len(lines)} lines: {lines[:3]}")
    if (work / "store").is_dir():
        running = [c.key for c in Store(work / "store").cells() if c.state() == "running"]
        if running:
            problems.append(f"cells {running} claim to be running")
    code, lines = run_command(command, work)
    if code != 0:
        problems.append(f"the rerun exited {code}: {lines[-1:]}")
    if outcome(command, work) != ref.outcomes[command]:
        got = outcome(command, work)
        differ = sorted(k for k in {*got, *ref.outcomes[command]} if got.get(k) != ref.outcomes[command].get(k))
        problems.append(f"the rerun differs from an uninterrupted run in {differ[:4]}")
    left = debris(work)
    if left:
        problems.append(f"debris left: {left[:4]}")
    return problems


def sample(points: list[Point], faults: list[str], count: int) -> list[tuple[Point, str]]:
    """`count` (point, fault) pairs spread evenly over the points, first and last included, the faults
    taken in turn: a deterministic choice."""
    step = (len(points) - 1) / max(count - 1, 1)
    chosen = sorted({round(i * step) for i in range(count)})
    return [(points[i], faults[n % len(faults)]) for n, i in enumerate(chosen)]
