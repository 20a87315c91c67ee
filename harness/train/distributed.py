"""The processes of one `refinery train` run: rank, world size, how a step's batch is split, and the
sums across ranks.

A step draws its whole effective batch (`train.batch` videos: prompts, seeds, exit step and the
objective's random numbers) from one generator keyed by (seed, step), identically on every rank.
Rank r takes a contiguous slice of those rows (harness.train.distributed.rows_of) and runs it in
micro-batches of at most `train.micro_batch` videos, one backward pass each; each micro-batch's loss
is weighted by its share of the effective batch, so the gradients summed over micro-batches and
ranks are the whole batch's mean gradient. What is trained therefore depends on the effective batch
only, not on the number of ranks or the micro-batch size (up to float round-off: the sums run in
another order).

Processes come from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), set by
`torchrun`, by `train.devices=N` (which re-executes the command under torch.distributed.run) or by
the SLURM launcher (one task per device; submitit's TorchDistributedEnvironment exports the same
variables). Backend: NCCL when CUDA is present, gloo on CPU.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from harness.experiment.config_schema import SlurmJob

INIT_TIMEOUT = timedelta(minutes=30)  # loading a 14B real score on every rank takes minutes


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes (size 1: no process group)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes logs and checkpoints."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def sum_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Sum the gradients of replicated parameters over the ranks, in one flat buffer (a parameter
        without a gradient on a rank adds zeros). FSDP has reduce-scattered the gradients of sharded
        parameters (DTensors) already, as a mean over the ranks: they are multiplied back to the sum
        (exact for a power-of-two world). FSDP2's divide factor 1 would spare that, but it needs NCCL's
        PreMulSum under a mixed-precision policy, which gloo lacks."""
        if self.size == 1:
            return
        for p in parameters:
            if is_sharded(p) and p.grad is not None:
                p.grad.mul_(self.size)
        local = [p for p in parameters if not is_sharded(p)]
        if not local:
            return
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in local])
        dist.all_reduce(flat)
        for p, g in zip(local, flat.split([p.numel() for p in local])):
            p.grad = g.view_as(p).clone()

    def sum_figures(self, figures: dict[str, float]) -> dict[str, float]:
        """Figures (already weighted by each rank's share of the batch) summed over the ranks."""
        if self.size == 1:
            return figures
        keys = sorted(figures)
        values = torch.tensor([figures[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(values)
        return dict(zip(keys, values.tolist()))


def is_sharded(p: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(p, DTensor)


def launched() -> bool:
    """Whether this process was started by a distributed launcher (torchrun, SLURM + submitit)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def join_world() -> World:
    """The process group of a launched run (NCCL on CUDA, gloo on CPU), or the single-process world."""
    if not launched():
        return World()
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    if size == 1:
        return World()
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local % torch.cuda.device_count())  # submitit may show each task one GPU
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=INIT_TIMEOUT)
    return World(rank, size, local)


def rows_of(batch: int, world: World) -> list[int]:
    """This rank's contiguous slice of a step's `batch` rows (the first batch % size ranks take one more)."""
    per, extra = divmod(batch, world.size)
    start = world.rank * per + min(world.rank, extra)
    return list(range(start, start + per + (world.rank < extra)))


def micro_batches(rows: list[int], micro: int) -> list[list[int]]:
    """`rows` in consecutive micro-batches of at most `micro` rows."""
    return [rows[i: i + micro] for i in range(0, len(rows), micro)]


@dataclass(frozen=True)
class Split:
    """How a step's effective batch is computed here: this rank's micro-batches (row indices into the
    step's draw) and the effective batch size that weights them."""

    batch: int
    parts: list[list[int]]
    world: World

    @staticmethod
    def of(batch: int, micro: int, world: World) -> "Split":
        return Split(batch, micro_batches(rows_of(batch, world), micro), world)

    def share(self, rows: list[int]) -> float:
        return len(rows) / self.batch


def start_ranks(processes: int, argv: list[str]) -> int:
    """Run `python -m harness.cli <argv>` as `processes` ranks on this host under torch's elastic
    launcher (torchrun's own code, torch.distributed.run, as `torchrun --standalone` runs it, but in this
    process: starting a launcher process costs a torch import), which sets each rank's environment,
    picks a free rendezvous port and stops every rank when one fails; returns the failed rank's exit
    code (128 + the signal for a rank killed by one, as a shell gives it), or 0."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    try:
        run(get_args_parser().parse_args(["--standalone", f"--nproc-per-node={processes}", "-m", "harness.cli",
                                          *argv]))
    except ChildFailedError as failed:
        _, failure = failed.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode
    return 0


def submit_to_slurm(job: "SlurmJob", rank: Callable[..., None], args: tuple, folder: Path) -> None:
    """Run `rank(*args)` in every task of one SLURM job of job.nodes x job.tasks_per_node tasks (one per
    GPU, or gloo tasks on CPU nodes) through submitit, and wait for it; a failed task's error is raised
    here. Each task first exports submitit's TorchDistributedEnvironment (MASTER_ADDR: the job's first
    node, MASTER_PORT keyed by the job id, RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE), so that it
    joins the run as a torchrun rank does (join_world)."""
    import submitit

    from harness.store.lease import say

    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(nodes=job.nodes, tasks_per_node=job.tasks_per_node, gpus_per_node=job.gpus_per_node,
                               cpus_per_task=job.cpus_per_task, timeout_min=job.timeout_min, mem_gb=job.mem_gb,
                               slurm_partition=job.partition, name="refinery-train")
    submitted = executor.submit(as_torch_rank, rank, *args)
    say(f"refinery: SLURM job {submitted.job_id} trains on {job.nodes} node(s) x {job.tasks_per_node} ranks; "
        f"its logs are in {folder}")
    submitted.results()


def as_torch_rank(rank: Callable[..., None], *args: object) -> None:
    """In a SLURM task: torchrun's environment from submitit's, then the rank's work."""
    import submitit

    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    rank(*args)
