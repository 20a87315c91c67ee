"""The training loop of the project's small supervised networks (the world probe, the world reward)."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from tqdm import tqdm


def fit(net: nn.Module, loss: Callable[[], torch.Tensor], steps: int, lr: float, desc: str) -> None:
    """Train `net` for `steps` steps of `loss()`, which draws its own batch: AdamW (weight decay 1e-4)
    under a one-cycle learning-rate schedule, with a progress bar showing the loss."""
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    bar = tqdm(range(steps), desc=desc, unit="step")
    for _ in bar:
        value = loss()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{value.item():.3f}")
