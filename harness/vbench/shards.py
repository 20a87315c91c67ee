"""VBench over several GPUs: one VBench call per worker, each on its own GPU (CUDA_VISIBLE_DEVICES),
and Refinery merges their results into the one results file a single-GPU run writes, with the same
numbers.

VBench's own multi-GPU mode (torchrun, `--ngpus`) is not used: it hard-codes NCCL and a CUDA gather,
and there a dimension's score is the mean of per-video scores, where the single-GPU run averages
some dimensions over frame pairs. The work is split two ways instead, whichever keeps each
dimension's score exactly what one GPU gives:

- `SPLIT_BY_VIDEO` dimensions, whose single-GPU score is the plain mean of per-video scores (each
  video's score depends on that video alone): the videos are dealt out round-robin, each worker
  scores its share, and the merge lists every video in the order a single-GPU run reads them and
  averages exactly as VBench does (np.mean, or a running sum divided by the count).
- every other dimension (frame-weighted: subject and background consistency, the GRiT ones, ...):
  whole dimensions are dealt out to workers, each scoring all the videos, and kept as they come.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import UsageError
from harness.store.files import atomic_write_json, read_json
from harness.vbench.scores import STANDARD, read_full_info

# dimension -> how its single-GPU score comes from its per-video scores (vbench/<dimension>.py)
SPLIT_BY_VIDEO = {
    "temporal_flickering": "np.mean", "dynamic_degree": "np.mean", "motion_smoothness": "np.mean",
    "overall_consistency": "np.mean", "temporal_style": "np.mean",
    "aesthetic_quality": "sum / n", "imaging_quality": "sum / n / 100",
}
SHARDS_DIR = ".shards"  # under the export: each worker's video links and results, removed once merged


@dataclass(frozen=True)
class Job:
    """One VBench call: `dimensions` over the videos `names` (None: the whole folder)."""

    worker: int
    dimensions: list[str]
    names: list[str] | None


def plan_jobs(dimensions: list[str], names: list[str], workers: int) -> list[Job]:
    """The calls of `workers` workers: the split dimensions over each worker's share of the videos,
    the other dimensions whole, dealt out round-robin after them (a worker runs its calls in turn)."""
    split = [d for d in dimensions if d in SPLIT_BY_VIDEO]
    whole = [d for d in dimensions if d not in SPLIT_BY_VIDEO]
    jobs = [Job(w, split, names[w::workers]) for w in range(workers) if split and names[w::workers]]
    jobs += [Job(w, [d for d in whole[w::workers]], None) for w in range(workers) if whole[w::workers]]
    return jobs


def single_gpu_order(video_dir: Path, mode: str, dimension: str, full_info: Path | None) -> list[str]:
    """The file names a single-GPU run scores for `dimension`, in its order: the folder's listing in
    custom_input mode; the suite's prompts with that dimension, samples 0-4 each, in standard mode."""
    present = os.listdir(video_dir)
    if mode != STANDARD:
        return present
    found = set(present)
    return [f"{prompt}-{i}.mp4" for prompt, dims in read_full_info(full_info) if dimension in dims
            for i in range(5) if f"{prompt}-{i}.mp4" in found]


def merge(job_results: list[tuple[Job, Path]], video_dir: Path, mode: str, full_info: Path | None) -> dict:
    """One results file's content, {dimension: [score, [per-video results]]}, from the jobs' files."""
    merged, per_video = {}, {}
    for job, path in job_results:
        data = read_json(path)
        for dim in job.dimensions:
            if job.names is None:
                merged[dim] = data[dim]
            else:
                per_video.setdefault(dim, {}).update(
                    {Path(v["video_path"]).name: v for v in data[dim][1]})
    for dim, by_name in per_video.items():
        order = [n for n in single_gpu_order(video_dir, mode, dim, full_info) if n in by_name]
        videos = [{**by_name[n], "video_path": str(video_dir / n)} for n in order]
        merged[dim] = [_score(dim, [v["video_results"] for v in videos]), videos]
    return merged


def _score(dim: str, values: list[float]) -> float:
    rule = SPLIT_BY_VIDEO[dim]
    if rule == "np.mean":
        return float(np.mean(values))
    total = 0.0
    for v in values:  # VBench's running sum, in its order
        total += v
    return total / len(values) / (100.0 if rule == "sum / n / 100" else 1.0)


def run_jobs(command: list[str], export_path: Path, video_dir: Path, name: str, jobs: list[Job],
             gpus: list[str | None], env: dict[str, str], prompts: dict[str, str] | None) -> list[tuple[Job, Path]]:
    """Start every worker (its jobs one after another, in one shell) and wait for all; each job's
    results file. command: the single-GPU driver command, whose --videos, --output, --name,
    --dimensions and --prompt-file each job replaces."""
    root = export_path / SHARDS_DIR / name
    shutil.rmtree(root, ignore_errors=True)
    scripts: dict[int, list[list[str]]] = {}
    outputs = []
    for n, job in enumerate(jobs):
        folder = root / f"job{n}"
        videos = video_dir.resolve()
        if job.names is not None:
            videos = folder / "videos"
            videos.mkdir(parents=True)
            for file in job.names:
                (videos / file).symlink_to(video_dir.resolve() / file)
        argv = _with(command, {"--videos": str(videos), "--output": str(folder / "out"), "--name": f"job{n}"})
        argv = argv[:argv.index("--dimensions") + 1] + job.dimensions + _after_dimensions(argv)
        if prompts is not None and job.names is not None:
            atomic_write_json(folder / "prompts.json", {f: prompts[f] for f in job.names})
            argv = _with(argv, {"--prompt-file": str(folder / "prompts.json")})
        scripts.setdefault(job.worker, []).append(argv)
        outputs.append((job, folder / "out" / f"job{n}_eval_results.json"))
    started = []
    for worker, calls in sorted(scripts.items()):
        worker_env = dict(env)
        if gpus[worker] is not None:
            worker_env["CUDA_VISIBLE_DEVICES"] = gpus[worker]
        script = " && ".join(shlex.join(argv) for argv in calls)
        started.append((worker, subprocess.Popen(["/bin/sh", "-c", script], env=worker_env)))
    try:
        failed = [(w, p.wait()) for w, p in started]
    finally:
        for _, p in started:
            if p.poll() is None:
                p.terminate()
                p.wait()
    failed = [(w, code) for w, code in failed if code != 0]
    if failed:
        worker, code = failed[0]
        raise UsageError(f"VBench worker {worker} exited with status {code} (its output is above); nothing "
                         f"was merged (its files are in {root})")
    missing = [p for _, p in outputs if not p.is_file()]
    if missing:
        raise UsageError(f"a VBench worker finished without writing {missing[0]}; see its output above")
    return outputs


def _with(argv: list[str], values: dict[str, str]) -> list[str]:
    out = list(argv)
    for flag, value in values.items():
        out[out.index(flag) + 1] = value
    return out


def _after_dimensions(argv: list[str]) -> list[str]:
    """The arguments after the dimension list (the next --flag on)."""
    start = argv.index("--dimensions") + 1
    rest = argv[start:]
    first_flag = next((i for i, a in enumerate(rest) if a.startswith("--")), len(rest))
    return rest[first_flag:]


def merged_run_info(job_results: list[tuple[Job, Path]], name: str, workers: int, output: Path) -> None:
    """`{name}_run.json` beside the merged results: the first job's versions, and the workers."""
    job, path = job_results[0]
    first = path.with_name(path.name.replace("_eval_results.json", "_run.json"))
    info = read_json(first) if first.is_file() else {}
    dims = [d for j, _ in job_results for d in j.dimensions]
    atomic_write_json(output / f"{name}_run.json", {**info, "dimensions": list(dict.fromkeys(dims)), "workers": workers})
