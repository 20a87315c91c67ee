"""Timing a reader can compare: the timing pass.

Wall time taken during generation depends on whatever else the machine was doing at that moment, and
a batch's throughput is one measurement (every video of a batch carries the same figure), so it is
recorded as metadata only. Reports take FPS from this pass instead: each method and its baseline run
interleaved in one process on the same inputs (the first `batch` videos of the cell, same prompts and
seeds), through the one rollout loop, warm-up runs excluded, in the order M B B M M B ... so that a
drift of the machine's speed weighs on both alike; the figure is the median over repeats, and FPS
relative to base the median of the pairwise ratios. Results are written to <store>/timings/<cell>.json
with when and where they were taken.

Beside wall time the pass records the process's CPU time of each run. On a machine other processes
load, wall time swings with the share of the cores a run happened to get, while CPU time counts only
the work done, so the CPU-time ratio stays close to the idle machine's wall-clock ratio; a pass taken
under a load above the core count is flagged in reports (Timing.loaded), its CPU-time ratio shown
beside the wall-clock one.
"""
from __future__ import annotations

import os
import platform
import socket
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import UsageError
from harness.store.files import atomic_write_json, read_json

if TYPE_CHECKING:
    from harness.experiment.pipeline import Run

TIMINGS_DIR = "timings"


@dataclass(frozen=True)
class Timing:
    cell: str
    baseline: str
    batch: int  # videos per rollout
    warmup: int  # runs of each, not counted
    repeats: int
    frames: int  # frames per rollout
    seconds: list[float]  # the method's rollouts, one per repeat
    base_seconds: list[float]  # the baseline's, interleaved with them
    taken: str  # UTC, ISO 8601
    host: str
    cpu: str
    threads: int
    device: str
    torch: str
    load: list[float]  # the 1-minute load average before and after the pass
    cores: int  # processors this process may run on
    cpu_seconds: list[float]  # process CPU time (all threads) of the method's timed runs...
    base_cpu_seconds: list[float]  # ...and of the baseline's

    @property
    def fps(self) -> float:
        return self.frames / statistics.median(self.seconds)

    @property
    def base_fps(self) -> float:
        return self.frames / statistics.median(self.base_seconds)

    @property
    def ratios(self) -> list[float]:
        """FPS relative to base, repeat by repeat: base seconds / method seconds."""
        return [b / m for m, b in zip(self.seconds, self.base_seconds)]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def ratio_low(self) -> float:
        return min(self.ratios)

    @property
    def ratio_high(self) -> float:
        return max(self.ratios)

    @property
    def cpu_ratio(self) -> float:
        """FPS relative to base in CPU time: the median of the pairwise base / method CPU seconds."""
        return statistics.median(b / m for m, b in zip(self.cpu_seconds, self.base_cpu_seconds))

    @property
    def loaded(self) -> bool:
        """Other processes wanted more cores than there are, during the pass."""
        return max(self.load) > self.cores


def _inputs(run: Run, batch: int) -> tuple[list[str], list[int]]:
    items = run.items()[:batch]
    return [p for _, p, _, _ in items], [s for *_, s in items]


def time_against(run: Run, base: Run, batch: int = 16, repeats: int = 5, warmup: int = 1) -> Timing:
    """Time `run` against `base` on the same first `batch` videos, interleaved in this process."""
    import torch

    from harness.engine.rollout import rollout

    if repeats < 1 or warmup < 0 or batch < 1:
        raise UsageError(f"timing needs repeats >= 1, warmup >= 0 and batch >= 1 (got {repeats}, {warmup}, "
                         f"{batch}); fix report.bench")
    inputs = _inputs(run, batch)
    if _inputs(base, batch) != inputs:
        raise UsageError(f"cells {run.key} and {base.key} have other prompts or seeds; only cells of one "
                         "suite and seeds are timed against each other")

    def once(which: Run) -> tuple[float, float, int]:
        cpu = time.process_time()
        ledger = rollout(which.model, which.method, *inputs, which.sampler).ledger
        return ledger.wall_seconds, time.process_time() - cpu, ledger.frames

    load_before = os.getloadavg()[0]
    for _ in range(warmup):
        once(run)
        once(base)
    timed: dict[str, list[tuple[float, float]]] = {"run": [], "base": []}
    frames = 0
    for r in range(repeats):
        for name, which in (("run", run), ("base", base)) if r % 2 == 0 else (("base", base), ("run", run)):
            wall, cpu, frames = once(which)
            timed[name].append((wall, cpu))
    (wall, cpu), (base_wall, base_cpu) = (list(zip(*timed[k])) for k in ("run", "base"))
    return Timing(run.key, base.key, len(inputs[0]), warmup, repeats, frames, list(wall), list(base_wall),
                  datetime.now(timezone.utc).isoformat(timespec="seconds"), socket.gethostname(), _cpu(),
                  torch.get_num_threads(), _device(torch), torch.__version__,
                  [round(load_before, 2), round(os.getloadavg()[0], 2)], len(os.sched_getaffinity(0)),
                  list(cpu), list(base_cpu))


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device(torch) -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"


def write_timing(store_root: Path, timing: Timing) -> Path:
    path = Path(store_root) / TIMINGS_DIR / f"{timing.cell}.json"
    atomic_write_json(path, asdict(timing))
    return path


def read_timings(store_roots: list[Path], baseline: str, cells: list[str]) -> dict[str, Timing]:
    """The timing of each cell against `baseline`, from the first store that holds one; a timing
    against another baseline is not comparable and is left out."""
    found: dict[str, Timing] = {}
    for cell in cells:
        for root in store_roots:
            path = Path(root) / TIMINGS_DIR / f"{cell}.json"
            if path.exists():
                try:
                    timing = Timing(**read_json(path))
                except TypeError as e:
                    raise UsageError(f"{path} is not a timing file ({e}); delete it and rerun `refinery bench`") from e
                if timing.baseline == baseline:
                    found[cell] = timing
                    break
    return found


def timing_note(timings: dict[str, Timing]) -> str:
    """When and where the timing pass ran, and how it was taken (ranges where passes differed)."""
    def span(values: set, unit: str) -> str:
        low, high = min(values), max(values)
        return f"{low if low == high else f'{low}–{high}'} {unit}{'s' * (high != 1)}"

    taken = sorted({t.taken[:16].replace("T", " ") for t in timings.values()})
    hosts = sorted({f"{t.host} ({t.cpu}, {span({t.threads}, 'thread')}, {t.device})" for t in timings.values()})
    when = taken[0] if len(taken) == 1 else f"{taken[0]} to {taken[-1]}"
    ts = timings.values()
    loaded = [t for t in ts if t.loaded]
    warning = "" if not loaded else (
        f" {len(loaded)} of {len(timings)} passes ran while other processes loaded the machine (1-minute load "
        f"up to {max(max(t.load) for t in loaded)} on {loaded[0].cores} cores), marked (loaded): their wall-clock "
        "ratios are not reliable; their CPU-time ratios (in the hover text) are; rerun `refinery bench` on a "
        "quiet machine.")
    return (f"FPS from the timing pass ({when} UTC on {'; '.join(hosts)}): each method and the baseline "
            f"run interleaved in one process on the same {span({t.batch for t in ts}, 'video')}, "
            f"{span({t.warmup for t in ts}, 'warm-up run')} excluded, median of "
            f"{span({t.repeats for t in ts}, 'repeat')}; FPS ÷ base is the median of the pairwise ratios. "
            f"Wall time taken during generation is metadata, not compared.{warning}")
