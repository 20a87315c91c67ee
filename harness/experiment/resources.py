"""Refuse a run whose one rollout batch cannot fit in memory, or whose videos cannot fit on disk,
before anything is allocated or written (`method.params.n=1000000000` would otherwise end in an
allocator traceback, `samples_per_prompt=10**9` in a list of a billion seeds).

The estimates are lower bounds: a batch holds, per row (a video times its method's rows, e.g. N
search candidates), the whole latent video in a few working copies, its KV cache and its decoded
frames as float32; a cell stores every video as uint8 frames, and beside them its records, spec,
status, manifest and score files, each taking whole blocks of its file system (cells.cell_bytes).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from harness.errors import UsageError
from harness.models.base import ModelSpec
from harness.store.cells import cell_bytes

WORKING_COPIES = 4  # x, x0, the path noise and the velocity of every latent


def _gib(n: float) -> str:
    """A size in the largest of GiB, MiB, KiB that leaves it at least 1 (a toy cell is KiB)."""
    exponent = next((e for e in (30, 20, 10) if n >= 2**e), 10)
    return f"{n / 2**exponent:.3g} {' KMG'[exponent // 10]}iB"


def batch_bytes(spec: ModelSpec, rows: int, element_bytes: int) -> int:
    """Memory one rollout batch of `rows` model rows needs at least."""
    c, h, w = spec.latent_shape
    latents = spec.num_latent_frames * c * h * w * element_bytes * WORKING_COPIES
    cache = spec.num_latent_frames * spec.cache_bytes_per_frame
    frames = spec.num_latent_frames * spec.frames_per_latent * spec.video_shape[0] * spec.video_shape[1] * \
        spec.video_shape[2] * 4
    return rows * (latents + cache + frames)


def video_bytes(spec: ModelSpec) -> int:
    """One stored video: uint8 (F, H, W, 3)."""
    return spec.num_latent_frames * spec.frames_per_latent * spec.video_shape[1] * spec.video_shape[2] * 3


def memory_limit(device: torch.device) -> int:
    """The memory of the device the batch lives on: the GPU's, else the machine's physical memory."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        import psutil

        return psutil.virtual_memory().total
    except ImportError:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _nearest_existing(folder: Path) -> Path:
    return next(p for p in (folder.resolve(), *folder.resolve().parents) if p.exists())


def free_disk(folder: Path) -> int:
    """Free bytes where `folder` is (or would be created)."""
    return shutil.disk_usage(_nearest_existing(folder)).free


def disk_block(folder: Path) -> int:
    """The allocation unit of the file system where `folder` is (or would be created): every file takes
    whole ones."""
    return os.statvfs(_nearest_existing(folder)).f_frsize or 4096


def check_creatable(path: Path, key: str) -> None:
    """Refuse, before any compute, an output path that cannot be written: one under a plain file, or
    in a folder this process may not write; nothing is created."""
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if existing != path.absolute() and not existing.is_dir():
        raise UsageError(f"{key}={path} is under {existing}, a plain file, not a folder; choose a path in a folder")
    folder = existing if existing.is_dir() else existing.parent
    problem = _write_problem(folder)
    if problem:
        raise UsageError(f"{key}={path}: folder {folder} {problem}; choose a path in a writable folder")


def _write_problem(folder: Path) -> str | None:
    """Why nothing can be written in the existing `folder`, blamed on what it is, or None: a read-only
    or virtual file system by name, anything else found by creating (and removing) a file, since
    permission bits alone miss root and ACLs."""
    fs = os.statvfs(folder)
    if fs.f_flag & os.ST_RDONLY:
        return "is read-only (a file system mounted read-only)"
    if fs.f_blocks == 0:  # /proc, /sys: not a disk; their "0 bytes free" is not the problem
        return "is not writable (a virtual file system such as /proc, which stores no files)"
    probe = folder / f".refinery-probe.{os.getpid()}"
    try:
        probe.touch(exist_ok=False)
    except OSError as exc:
        return f"is not writable ({exc.strerror or type(exc).__name__})"
    probe.unlink()
    return None


def check_resources(spec: ModelSpec, device: torch.device, dtype: torch.dtype, rows_per_video: int,
                    videos: int, batch_size: int, store: Path, metrics: int = 0) -> None:
    """One UsageError line with the estimate and the limit when the run cannot fit (module docstring)."""
    per_batch = min(batch_size, videos)
    need = batch_bytes(spec, per_batch * rows_per_video, dtype.itemsize)
    limit = memory_limit(device)
    if need > limit:
        raise UsageError(f"one rollout batch needs at least {_gib(need)} ({per_batch} videos x {rows_per_video} rows "
                         f"each: latents, KV cache, decoded frames), more than the {_gib(limit)} of {device.type} "
                         "memory here; lower batch_size or the method's candidates (method.params.n)")
    check_creatable(store, "paths.store")  # a read-only or virtual file system is not "0 bytes free"
    stored = cell_bytes(videos, video_bytes(spec), metrics, disk_block(store))
    free = free_disk(store)
    if stored > free:
        raise UsageError(f"the cell's {videos} videos need {_gib(stored)} with their records, manifest and {metrics} "
                         f"score files in paths.store={store}, which has {_gib(free)} free; lower "
                         "samples_per_prompt or the suite's prompts, or free space")
