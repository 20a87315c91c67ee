"""The three stages over a composed config: generate (videos and records), score (metrics), and the
expansion of an experiment's sweep into the cells a report reads.

A cell's key hashes its frozen run spec: the resolved model (with its weights' digest), sampler,
method (with its version), suite prompts, seeds, batch size and CPU threads, and the stored video
format where it is not npy (harness/store/video_format.py), i.e. everything that changes the bits of a
video as metrics read it (batch size and threads change the order of float32 sums). Metrics are
not part of the key: changing a metric rescores stored videos, it never regenerates them.
"""
from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from harness.experiment.config_schema import validate
from harness import __version__
from harness.errors import UsageError
from harness.store.files import WriteRefused
from harness.store.lease import Lease, LeaseLost, say, slurm_job
from harness.engine.method import Method
from harness.models.base import VideoModel, encode_suite
from harness.engine.registry import METHODS, METRICS, MODELS
from harness.experiment.resources import check_resources
from harness.engine.samplers import Sampler
from harness.engine.rollout import rollout
from harness.store.cells import Cell, Store, cell_key
from harness.experiment.spec_form import normal_timesteps
from harness.store.embeddings import PromptEmbeddings
from harness.store.video_format import video_format
from harness.experiment.suites import read_suite
from harness.engine.metric import VideoBatch, check_weights

SCORE_BATCH = 64
_WAIT_S = 0.5  # how often a writer with nothing left to claim looks at the others' batches


@dataclass
class Run:
    """One cell, resolved: everything needed to generate it, and its frozen spec."""

    model: VideoModel
    method: Method
    sampler: Sampler
    prompts: list[str]
    tags: list[list[str]]
    seeds: list[int]
    batch_size: int
    threads: int
    spec: dict[str, Any]

    @property
    def key(self) -> str:
        return cell_key(self.spec)

    def items(self) -> list[tuple[int, str, list[str], int]]:
        """(video index, prompt, tags, seed) of every video, prompt-major."""
        return [(p * len(self.seeds) + s, prompt, self.tags[p], seed)
                for p, prompt in enumerate(self.prompts) for s, seed in enumerate(self.seeds)]


def _positive(name: str, value: int, minimum: int) -> int:
    if not isinstance(value, int) or value < minimum:
        raise UsageError(f"{name}={value} is out of range; use an integer >= {minimum}")
    return value


def load_model(cfg: DictConfig) -> VideoModel:
    """The model the config names, through its backend's registry entry."""
    return MODELS.get(cfg.model.backend).load(OmegaConf.to_container(cfg.model, resolve=True), Path(cfg.paths.weights))


def sampler_from(cfg: DictConfig) -> Sampler:
    """The sampler: the sampler group's settings, the model's own sampling defaults where they are
    null (model.sampling: Self-Forcing's 4 warped steps with shift 5, CausVid's 1000/757/522 with
    shift 8). Setting sampler.steps alone asks for evenly spaced timesteps, not the model's list.
    Its timesteps are in normal form (harness.experiment.spec_form): one key for one piece of work."""
    s, defaults = cfg.sampler, cfg.model.get("sampling") or {}
    timesteps = s.get("timesteps")
    if timesteps is None and s.steps is None:
        timesteps = defaults.get("timesteps")
    steps = s.steps if s.steps is not None else len(timesteps) if timesteps is not None else defaults.get("steps", 4)
    shift = s.shift if s.shift is not None else defaults.get("shift", 1.0)
    warp = s.get("warp") if s.get("warp") is not None else defaults.get("warp", True)
    steps = _positive("sampler.steps", steps, 1)
    return Sampler(s.kind, steps, float(shift), normal_timesteps(steps, timesteps, defaults.get("timesteps")), bool(warp))


def resolve_run(cfg: DictConfig) -> Run:
    """Validate a composed config and build its Run; every bad input fails here, before compute."""
    validate(cfg)  # types, ranges, unknown keys, method params and metric options
    check_metric_weights(cfg.metric, Path(cfg.paths.weights))
    params = cfg.method.get("params")
    method = METHODS.get(cfg.method.name)(**(OmegaConf.to_container(params) if params else {}))
    suite = read_suite(cfg.suite)
    sampler = sampler_from(cfg)
    model = load_model(cfg)
    model.validate_prompts(suite.prompts)  # the model's word first: what it cannot take at all
    for name in cfg.metric:
        METRICS.get(name).check_prompts(suite.prompts)
    method.prepare(model.spec, sampler, Path(cfg.paths.weights))
    method.bind(model)  # refuses a checkpoint trained for other weights, before anything is written
    check_resources(model.spec, model.device, getattr(torch, str(cfg.model.get("dtype", "float32"))),
                    method.rows_per_video(), len(suite.prompts) * cfg.samples_per_prompt, cfg.batch_size,
                    Path(cfg.paths.store), metrics=len(cfg.metric))
    seeds = list(range(cfg.seed, cfg.seed + cfg.samples_per_prompt))
    video = video_format(cfg.model.get("video_format", "npy"), model.spec.fps)
    video.check_size(*model.spec.video_shape[1:])
    spec = {
        "refinery": __version__,
        "model": {"name": cfg.model.name, "digest": model.digest(), "num_chunks": model.spec.num_chunks,
                  "device": str(model.device), "dtype": str(cfg.model.get("dtype", "float32"))},
        "sampler": asdict(sampler),
        "method": method.describe(),
        "suite": {"name": cfg.suite.name, "version": cfg.suite.version, "prompts": suite.prompts},
        "seeds": seeds,
        "batch_size": cfg.batch_size,
        "threads": cfg.threads,
    }
    if video.spec() is not None:  # npy: no entry, so cells stored as before keep their keys
        spec["video"] = video.spec()
    return Run(model, method, sampler, suite.prompts, suite.tags, seeds, cfg.batch_size, cfg.threads, spec)


def open_store(cfg: DictConfig) -> Store:
    return Store(Path(cfg.paths.store))


def to_uint8(videos: torch.Tensor) -> np.ndarray:
    """(B, F, 3, H, W) floats in [0, 1] -> (B, F, H, W, 3) uint8, the stored form every metric reads."""
    return (videos.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()


@contextmanager
def cpu_threads(threads: int) -> Iterator[None]:
    """Compute with `threads` CPU threads whatever the environment says (OMP_NUM_THREADS, the limits a
    joblib worker gets): how float32 matrix products split their sums, and so the last bits of a
    video or a score, depends on the thread count (measured: 1 and 2 threads differ at batch 2)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Generated:
    videos: int = 0  # videos generated by this call
    model_calls: int = 0  # denoiser evaluations, cache passes and decodes, per batch element


def generate(run: Run, store: Store, progress: bool = True, resume: str | None = None) -> Generated:
    """Generate the cell's missing or damaged videos and records, and nothing else; a complete, intact
    cell costs no model call. resume: the command that finishes the cell if this process dies. A write
    the file system refuses (full, read-only) ends it with a WriteRefused line; what was finished
    stays, and the same command resumes the cell.

    Any number of processes (on any hosts of a shared store) may generate one cell at once: each
    claims whole rollout batches (Cell.claim), skips those another live writer holds, waits for them
    at the end and takes over a dead writer's claim. Whoever finds every video recorded last writes
    the manifest, once. Each batch is rolled out as a single writer would, so the videos are the same
    bytes whoever wrote them; each record names its writer (`worker`)."""
    cell = store.cell(run.key)
    if _up_to_date(cell):
        return Generated()
    with cell.writer():
        with cell.lock():
            if _up_to_date(cell):  # another worker finished it while we waited
                return Generated()
            cell.write_spec(run.spec)
            cell.set_status("running", resume=resume)
        try:
            with cpu_threads(run.threads):
                made = _generate_batches(run, cell, progress)
        except LeaseLost:
            raise  # the batch is another process's now: this one writes nothing more
        except BaseException as exc:
            _record_failure(cell, exc, resume)
            raise
        _complete(cell, len(run.items()), resume)
    cell.tidy_claims()
    return made


def _record_failure(cell: Cell, exc: BaseException, resume: str | None) -> None:
    """Mark the cell failed. Where the file system refuses that too (the disk that stopped the cell is
    still full, or read-only), its status stays "running" under a lease released right after, which
    reads as interrupted (Cell.state): resumable by the same command, never a live writer."""
    try:
        with cell.lock():
            if not cell.is_complete():  # another writer of the cell may have finished it
                cell.set_status("failed", error=f"{type(exc).__name__}: {exc}", resume=resume)
    except WriteRefused:
        pass


def _up_to_date(cell: Cell) -> bool:
    """Complete, with every video, record and the spec intact (score files are score's business), as
    size and modification time say: a finished cell opens no video."""
    return cell.is_complete() and not [d for d in cell.damage(full=False) if not d.file.startswith("scores/")]


def _complete(cell: Cell, videos: int, resume: str | None) -> None:
    """Write the manifest and mark the cell complete, unless another writer already did."""
    with cell.lock():
        if not _up_to_date(cell):
            cell.write_manifest(videos)
            cell.set_status("complete", resume=resume)


def _generate_batches(run: Run, cell: Cell, progress: bool) -> Generated:
    """Roll out every batch that holds a video whose files are missing or damaged, and write exactly
    those files; batches another live writer holds are left to it and waited for. Batches are cut as
    in the first run (batch_size is part of the key), so a repair or a share reproduces the bytes."""
    items = run.items()
    unusable = cell.unusable([i for i, *_ in items])
    batches = [items[i: i + run.batch_size] for i in range(0, len(items), run.batch_size)]
    todo = [b for b in batches if any(i in unusable for i, *_ in b)]
    if todo:  # the suite's prompts once, kept in the store; the text encoder then leaves the GPU
        encode_suite(run.model, run.prompts, PromptEmbeddings(cell.path.parent.parent))
    bar = tqdm(total=len(items), initial=len(items) - sum(map(len, todo)), unit="video",
               desc=f"{run.method.name} {cell.key[:8]}", disable=not progress)
    made, worker, waited = Generated(), worker_identity(run.model.device), False
    while todo:
        held_by_others = []
        for batch in todo:
            with cell.claim(batch[0][0]) as claim:
                if claim is None:
                    held_by_others.append(batch)
                    continue
                # under the claim: another writer may have made it since the first look
                parts = cell.unusable([i for i, *_ in batch])
                if parts:
                    _roll_out(run, cell, batch, parts, worker, claim, made)
            bar.update(len(batch))
        todo = [b for b in held_by_others if not all(cell.has_record(i) for i, *_ in b)]
        bar.update(sum(map(len, held_by_others)) - sum(map(len, todo)))
        if todo:
            if not waited:
                say(f"cell {cell.key}: waiting for other writers to finish {len(todo)} batches "
                    "(taken over if they die)")
                waited = True
            time.sleep(_WAIT_S)
    bar.close()
    return made


def _roll_out(run: Run, cell: Cell, batch: list, parts: dict[int, set[str]], worker: dict, claim: Lease,
              made: Generated) -> None:
    """Generate one batch and write the files `parts` names for each of its videos."""
    result = rollout(run.model, run.method, [p for _, p, _, _ in batch], [s for *_, s in batch], run.sampler)
    made.videos += len(batch)
    made.model_calls += result.ledger.nfe + result.ledger.cache_passes + result.ledger.decodes
    ledger = result.ledger.per_video(len(batch))
    ledger["host"] = socket.gethostname()
    claim.check()  # a holder whose lease lapsed must not overwrite its successor's files
    for (index, prompt, tags, seed), video in zip(batch, to_uint8(result.videos.cpu())):
        todo = parts.get(index, set())
        record = {"index": index, "prompt": prompt, "tags": tags, "seed": seed, "ledger": ledger,
                  "worker": worker}
        if "video" in todo:
            cell.write_video(index, video, record if "record" in todo else None)
        elif "record" in todo:
            cell.write_record(index, record)


def worker_identity(device: torch.device) -> dict[str, Any]:
    """Who writes a record: host, pid, SLURM array task (or job) and device. A CUDA device is named by
    its index among all the host's GPUs where CUDA_VISIBLE_DEVICES maps it (cuda:0 of a worker that
    sees only GPU 3 is cuda:3). Measured, like the ledger's times: never part of a video's bytes."""
    name = str(device)
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if device.type == "cuda" and visible and (device.index or 0) < len(visible):
        name = f"cuda:{visible[device.index or 0].strip()}"
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_task": slurm_job(), "device": name}


def check_metric_weights(metric_cfg: DictConfig, weights_dir: Path) -> None:
    """Refuse a run whose metrics miss weight files before it generates anything."""
    for name, options in metric_cfg.items():
        options = OmegaConf.to_container(options) if options is not None else {}
        check_weights(f"metric {name!r}", weights_dir, METRICS.get(name).required_weights(options))


def score(cell: Cell, metric_cfg: DictConfig, weights_dir: Path, force: bool = False) -> list[str]:
    """Score a complete cell with every configured metric whose stored scores are stale, damaged or
    absent, with the cell's CPU threads; a cell with a damaged video or record is refused.

    Returns the names of the metrics computed. Deciding what is stale and computing it happen under the
    cell's lease: a second process scoring the same cell waits, then finds the first one's scores
    up to date and computes nothing (unless force)."""
    cell.refuse_damage(scores=False, full=False)
    if not cell.is_complete():
        raise UsageError(f"cell {cell.key} is not complete; run `refinery run` (or sweep) for it first")
    with cell.lock():  # the cell's other writers (shards) wait, then find the scores up to date
        indices = cell.video_indices()
        stale = _stale_metrics(cell, metric_cfg, weights_dir, len(indices), force)
        with cpu_threads(cell.spec().get("threads", torch.get_num_threads())):
            return [_score_one(cell, name, metric, options, indices) for name, (metric, options) in stale.items()]


def _stale_metrics(cell: Cell, metric_cfg: DictConfig, weights_dir: Path, videos: int,
                   force: bool) -> dict[str, tuple[Any, dict]]:
    """name -> (metric, options) of every configured metric whose stored scores are not up to date for
    its version, its options and the cell's videos (all of them when force)."""
    existing = cell.read_scores()
    stale = {}
    for name, options in metric_cfg.items():
        options = OmegaConf.to_container(options) if options is not None else {}
        metric_cls = METRICS.get(name)
        old = existing.get(name, {})
        if force or old.get("version") != metric_cls.version or old.get("options") != options \
                or old.get("videos") != videos:
            stale[name] = (metric_cls(weights_dir=weights_dir, **options), options)  # refuses missing weights
    return stale


def _score_one(cell: Cell, name: str, metric: Any, options: dict, indices: list[int]) -> str:
    """Compute one metric over the cell's videos and store its scores; returns its name."""
    for start in range(0, len(indices), SCORE_BATCH):
        chunk = indices[start: start + SCORE_BATCH]
        metric.update(VideoBatch(np.stack([cell.read_video(i) for i in chunk]),
                                 [cell.read_record(i) for i in chunk]))
    values = metric.compute()
    cell.write_scores(name, {"metric": name, "version": metric.version, "options": options,
                             "higher_is_better": dict(metric.higher_is_better),
                             "values": {k: v.tolist() for k, v in values.items()}, "videos": len(indices)})
    return name
