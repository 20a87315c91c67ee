"""What training at paper scale adds to a run: fp32 master weights under bf16 compute, per-block
gradient checkpointing, and FSDP2 sharding of DMD's score networks (harness.train.trainer applies them
as train.precision, train.checkpointing and train.sharding say).

- Mixed precision (`train.precision=mixed`): the model computes in its own dtype (bf16 at scale) and
  the adapter's tensors stay in it; AdamW steps fp32 copies of them (its state is fp32 too), and
  after each step the copies are cast back into the adapter. A bf16 adapter stepped directly loses
  every update smaller than half its last bit (at lr 2e-5, most of them). The checkpoint holds the
  fp32 copies.
- Gradient checkpointing (`train.checkpointing=true`): the trained module keeps only each transformer
  block's input and recomputes the block in the backward pass; gradients are unchanged. Wan's
  transformer takes diffusers' own switch (`enable_gradient_checkpointing`, non-reentrant
  torch.utils.checkpoint), the toy's denoiser its `gradient_checkpointing` flag.
- Sharding (`train.sharding=fsdp`, several ranks): DMD's real score (frozen, the 14B model at scale)
  and fake score (trained) are each wrapped with FSDP2's `fully_shard`, block by block and then the
  root, as torchtitan wraps a diffusion transformer: each rank keeps 1/N of their weights (and of the
  fake score's AdamW state) and gathers a block's weights only while it runs. Under mixed precision
  the fake score's weights become fp32 shards that FSDP casts to the model's dtype at each gather, and
  its gradients are reduced in fp32. The frozen base of the generator is sharded too
  (`shard_generator`), but layer by layer, not block by block: the base and its adapted copies
  (harness.train.adapters) are different module trees that share their leaf modules, the layers
  that hold the weights, and FSDP2 gathers a unit's weights only in that unit's own forward hook, so
  only a module that every tree runs can be a unit (a block of the base is not the adapted copy's
  block, and Wan's chunked forward never runs the transformer's root). Each layer is one unit in its
  own dtype (bf16 linears, the fp32 norms that diffusers keeps), resharded after every forward.
  The trainable adapter stays out of every unit, replicated (it is small): its tensors live in
  peft's LoRA layers of the copies, never in a base layer, so the uniform-dtype rule of FSDP2
  (`FSDP expects uniform original parameter dtype`) never meets fp32 trainables beside bf16 frozen
  weights, and harness.train.distributed sums its gradients. Parameters that belong to a module with
  children (a Wan block's and the root's `scale_shift_table`, the toy's position tables: under 0.1%
  of the weights) stay replicated.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

from harness.errors import UsageError
from harness.train.checkpoints import section

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh


class MasterWeights:
    """fp32 copies of the trained tensors, which the optimiser steps (module docstring)."""

    def __init__(self, named: dict[str, nn.Parameter]):
        self.names = list(named)
        self.parameters = list(named.values())
        self.weights = [p.detach().float().clone().requires_grad_(True) for p in self.parameters]

    def take_gradients(self) -> None:
        """The adapter's gradients (summed over micro-batches and ranks), in fp32, onto the copies."""
        for w, p in zip(self.weights, self.parameters):
            w.grad = None if p.grad is None else p.grad.float()
            p.grad = None

    def give_weights(self) -> None:
        """The stepped copies, cast, into the adapter."""
        with torch.no_grad():
            for w, p in zip(self.weights, self.parameters):
                p.copy_(w)

    def state(self) -> dict[str, torch.Tensor]:
        return {n: w.detach().clone() for n, w in zip(self.names, self.weights)}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, w in zip(self.names, self.weights):
                w.copy_(state[n])


def enable_checkpointing(module: nn.Module) -> None:
    """Per-block gradient checkpointing of a trained module (module docstring)."""
    if callable(getattr(module, "enable_gradient_checkpointing", None)):
        module.enable_gradient_checkpointing()  # diffusers: every block through torch.utils.checkpoint
    elif hasattr(module, "gradient_checkpointing"):
        module.gradient_checkpointing = True
    else:
        raise UsageError(f"{type(module).__name__} cannot checkpoint its blocks; set train.checkpointing=false")


def blocks_of(module: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a score network (Wan's and the toy's both name them `blocks`)."""
    blocks = getattr(module, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise UsageError(f"{type(module).__name__} has no `blocks` to shard; set train.sharding=none")
    return list(blocks)


def mesh_of_ranks() -> "DeviceMesh":
    """The 1-D mesh of every rank: CUDA with NCCL, else a CPU mesh over gloo (the tests')."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cuda" if torch.cuda.is_available() else "cpu", (dist.get_world_size(),))


def weight_layers(module: nn.Module) -> list[nn.Module]:
    """The modules without children that hold parameters: the units of `shard_generator`."""
    return [m for m in module.modules()
            if next(m.children(), None) is None and next(m.parameters(recurse=False), None) is not None]


def quiet_view_warning() -> None:
    """FSDP2 warns, at every forward, that a sharded module returned a view, in case a caller modifies it
    in place (which would skip the gradient's all-gather). Nothing here does: sharded training equals
    whole training (tests/test_train_scale.py), so the warning is silenced, that warning alone."""
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(\w+\) returned a view tensor",
                            category=UserWarning)


def shard_generator(module: nn.Module, mesh: "DeviceMesh") -> None:
    """FSDP2 over the generator's frozen base, each weight layer a unit of its own (module docstring).
    Called after the adapters are built: their copies share these very layers."""
    from torch.distributed.fsdp import fully_shard

    if any(p.requires_grad for p in module.parameters()):
        raise ValueError("the generator's base must be frozen before it is sharded")  # adapters live elsewhere
    quiet_view_warning()
    for layer in weight_layers(module):
        # explicit: a unit that runs first becomes an FSDP root, which by default stays gathered
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)


def shard_scores(objective: object, mixed: bool, shared: nn.Module, mesh: "DeviceMesh") -> None:
    """FSDP2 over DMD's real and fake scores (module docstring); a score that is the generator's own
    module (`shared`: the toy flow model scores with its own denoiser) is left to shard_generator. The
    fake score's optimiser is rebuilt over the sharded parameters."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    quiet_view_warning()
    scores = [s for s in (getattr(objective, "real", None), getattr(objective, "fake", None)) if s is not None]
    for score in scores:
        module = score.module
        if module is shared:
            continue
        trained = any(p.requires_grad for p in module.parameters())
        compute = next(module.parameters()).dtype
        policy = MixedPrecisionPolicy()
        if trained and mixed:
            module.float()  # the fp32 masters; FSDP casts them to the compute dtype when it gathers
            policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)
        for block in blocks_of(module):
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(module, mesh=mesh, mp_policy=policy)
    if callable(getattr(objective, "critic_optimizer", None)):
        objective.fake_opt = objective.critic_optimizer()


def network_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """A trained network's and its optimiser's state as flat tensors, sharded (DTensors) where FSDP
    shards them, as torch.distributed.checkpoint saves and reshards them: no gathering. The
    optimiser's hyper-parameters (not tensors) are left out: they come from the run's config."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    flat = StateDictOptions(flatten_optimizer_state_dict=True)
    optim = get_optimizer_state_dict(module, optimizer, options=flat)  # allocates a fresh optimiser's state
    return {**{f"model.{k}": v for k, v in get_model_state_dict(module).items()},
            **{f"optimizer.{k}": v for k, v in optim.items() if isinstance(v, torch.Tensor)}}


def load_network_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, torch.Tensor]) -> None:
    """Restore what network_state returned (loaded in place by torch.distributed.checkpoint)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    flat = StateDictOptions(flatten_optimizer_state_dict=True)
    optim = get_optimizer_state_dict(module, optimizer, options=flat)  # the hyper-parameters, from the config
    optim.update(section(state, "optimizer."))
    set_model_state_dict(module, section(state, "model."))
    set_optimizer_state_dict(module, optimizer, optim, options=flat)
