"""Which GPU each of several worker processes gets: one visible GPU each, named by the
CUDA_VISIBLE_DEVICES value that worker is started with (so every worker computes on its cuda:0)."""
from __future__ import annotations

import os

from harness.errors import UsageError


def gpus_for(on_gpu: bool, workers: int, setting: str) -> list[str | None]:
    """The CUDA_VISIBLE_DEVICES of each of `workers` workers, or None for each where they run on the
    CPU; more workers than visible GPUs is refused (setting: the option that asked for them)."""
    if not on_gpu:
        return [None] * workers
    visible = visible_gpus()
    if workers > len(visible):
        raise UsageError(f"{setting}={workers} but {len(visible)} GPUs are visible "
                         f"({', '.join(visible) or 'none'}); use {setting}<={len(visible)}, one worker per GPU")
    return visible[:workers]


def visible_gpus() -> list[str]:
    """This process's GPUs as CUDA_VISIBLE_DEVICES names them (all of the host's when it is unset)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    import torch  # only where no variable says it: counting asks the driver

    return [str(i) for i in range(torch.cuda.device_count())]
