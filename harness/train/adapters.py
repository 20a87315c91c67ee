"""LoRA adapters on a backend's trainable module, the noise-refiner network built from them, and the
base class of methods whose weights are trained: what sampling a trained method needs, so it lies
outside harness.train (sampling never imports the trainer or the objectives).

Everything here goes through the trainable-backend protocol (harness.models.base.TrainableBackend):
the module that takes LoRA (`trainable`), its adapter targets (`lora_targets`), its output head
(`output_head`), a view of the model running another module (`with_trainable`), and the chunk
forward with explicit noise levels and extra keys and values (`chunk_forward`). Nothing here knows
which backend it adapts.

Adapters are deltas on the one base: `shared_copy` copies the module's structure but not its
tensors, so an adapted module shares every base weight (the base model, its text encoder and VAE
are never copied), and peft's LoRA layers add their low-rank products on the fly. It shares the
base's leaf modules themselves (the layers that hold the weights), not only their tensors: FSDP2
shards a frozen base layer by layer (harness.train.scale.shard_generator) and gathers a layer's
weights when that module runs, so the base and every adapted copy must run the same module. LoRA is peft's,
with peft's init (A random from a fixed seed, B zero): an untrained adapter adds exactly 0.0, so the
adapted model is the base model bit for bit.

Sampling (method parameter `merge`, default true) runs a merged copy instead (`merged_copy`): each
adapted layer gets a weight of its own, the base's plus its delta (peft's merge), so a call costs what
the base's costs; every other tensor stays the base's. That copy holds one more weight per adapted
layer (on Wan2.1-1.3B, about the whole transformer: 2.6 GiB in bf16), so `merge: false` samples with
the deltas where memory is tight. Merged and unmerged agree within float rounding, not bit for bit,
so the setting is part of the method's description and of the cell key. Training always runs the
deltas; the merged copy is rebuilt when any tensor of the adapted module was written since
(`weights_stamp`), so a sampling rollout never runs stale weights.

NoiseRefiner (AutoRefiner Sec. 3.4, after HyperNoise's zero-initialised output layer): the base
network with LoRA on its adapter targets and, in place of its output head, a head of its own whose
weight and bias start at zero. Its output is exactly zero until training moves that head: Δε = 0 and
the refined noise is the base noise, bit for bit. The head is trained in full (`head: full`, the
default), unconstrained as the paper's is on Wan (a rank-128 LoRA on a head of 64 outputs), or stays
frozen with LoRA on it (`head: lora`), which confines Δε to `rank` of a token's output dimensions (8
of the toy's 64); refiners trained before the choice existed are `lora` (TrainedMethod.legacy_arch).
One call refines one chunk's noise; its reflective KV cache is the attention context of that call:
  - history: K/V of the clean past chunks in the refiner's own cache (its adapters change K/V), filled
    at every commit and evicted like the base model's (local attention);
  - previous output: one clean pass (timestep 0) of the previous step's denoised x0 at the chunk's
    frame positions gives its K/V;
  - the noise itself at those same frame positions, at the noise level it will be mixed at.
A switch that is off removes its input from the context and skips the pass that computes it. The K/V
of history and previous output come from passes without gradient: no gradient reaches them (Sec. 3.4).
"""
from __future__ import annotations

import copy
import itertools
import threading
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from harness.errors import UsageError
from harness.engine.ledger import Ledger
from harness.engine.method import Method
from harness.models.base import Cond, KVCache, ModelSpec, TrainableBackend, VideoModel, timestep_of
from harness.engine.context import Context, RolloutResult
from harness.engine.samplers import Sampler
from harness.train.adapter_files import AdapterFile, load_adapter

LORA_INIT_SEED = 0  # A's init; B is zero, so the seed never changes an untrained adapter's output
DEFAULT_RANK = 8  # the toy's dim 128 over Wan's 1536 puts the paper's ranks 16..128 at about 1..11


def trainable_backend(model: VideoModel) -> TrainableBackend:
    missing = [a for a in ("trainable", "output_head", "lora_targets", "with_trainable", "chunk_forward")
               if not hasattr(model, a)]
    if missing:
        raise UsageError(f"model {model.spec.name!r} is not a trainable backend (it lacks {', '.join(missing)}); "
                         "trained methods need one (the toy and wan_causal backends are)")
    return model


def shared_copy(module: nn.Module) -> nn.Module:
    """A copy of `module`'s modules that shares every parameter and buffer, and every leaf module
    (module docstring), with it: adapters then go on the copy (peft wraps a shared leaf, it does not
    change it), and the base module, its weights and their digest stay as they are."""
    leaves = [m for m in module.modules() if next(m.children(), None) is None]
    memo = {id(t): t for t in itertools.chain(module.parameters(), module.buffers(), leaves)}
    return copy.deepcopy(module, memo)


def add_lora(module: nn.Module, targets: list[str], rank: int, alpha: float) -> nn.Module:
    """LoRA on the named linear layers of `module`, in place; afterwards only the adapters are trainable."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(LORA_INIT_SEED)
        return inject_adapter_in_model(config, module)


def adapted_copy(model: VideoModel, rank: int, alpha: float) -> nn.Module:
    """The model's trainable module with LoRA on its adapter targets, sharing the base's weights."""
    backend = trainable_backend(model)
    module = shared_copy(backend.trainable)
    return add_lora(module, backend.lora_targets(module), rank, alpha)


def merged_copy(adapted: nn.Module) -> nn.Module:
    """A sampling copy of `adapted` whose LoRA layers are plain layers again, each with a weight of its
    own: the base's plus the adapter's delta (peft's merge). Every other tensor stays shared, and the
    base's weights are never written."""
    from peft.tuners.lora import LoraLayer

    merged = shared_copy(adapted)
    with torch.no_grad():
        for name, layer in [(n, m) for n, m in merged.named_modules() if isinstance(m, LoraLayer)]:
            shared = layer.get_base_layer()  # the base's own leaf (shared_copy): never written
            own = copy.copy(shared)
            own._parameters = {**shared._parameters,  # merge writes this weight
                               "weight": nn.Parameter(shared.weight.detach().clone(), requires_grad=False)}
            layer.base_layer = own
            layer.merge(safe_merge=True)
            merged.set_submodule(name, own)
    return merged


def weights_stamp(module: nn.Module) -> tuple[int, ...]:
    """Changes whenever a tensor of `module` is written in place (an optimiser step, a loaded adapter
    state): torch's per-tensor version counter, which autograd keeps for the same purpose."""
    return tuple(p._version for p in module.parameters())


def check_rank(rank: object, alpha: object) -> None:
    """Explicit values only (None means: from the checkpoint, or the default)."""
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise UsageError(f"method.params.rank={rank!r} is out of range; use an integer >= 1")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0):
        raise UsageError(f"method.params.alpha={alpha!r} is out of range; use a number > 0 (null: = rank)")


HEADS = ("full", "lora")  # how a refiner's zero-initialised output head is trained (module docstring)


def check_head(value: object) -> None:
    if value is not None and value not in HEADS:
        raise UsageError(f"method.params.head={value!r} is not one of {', '.join(HEADS)}; use one of those "
                         "(null: the checkpoint's)")


def check_switch(name: str, value: object) -> None:
    if value is not None and not isinstance(value, bool):
        raise UsageError(f"method.params.{name}={value!r} is not a switch; use true or false "
                         "(null: the checkpoint's)")


class NoiseRefiner:
    """The refiner network T_φ (module docstring)."""

    def __init__(self, model: VideoModel, rank: int, alpha: float, history: bool, previous: bool,
                 head: str = "full"):
        backend = trainable_backend(model)
        module = shared_copy(backend.trainable)
        out = module.get_submodule(backend.output_head)
        zero = nn.Linear(out.in_features, out.out_features, device=out.weight.device, dtype=out.weight.dtype)
        nn.init.zeros_(zero.weight)
        nn.init.zeros_(zero.bias)
        module.set_submodule(backend.output_head, zero.requires_grad_(False))
        targets = [name for name in backend.lora_targets(module) if name != backend.output_head]
        if head == "lora":  # the zero head frozen, Δε its LoRA branch alone (within the rank)
            targets.append(backend.output_head)
        self.module = add_lora(module, targets, rank, alpha)
        if head == "full":
            zero.requires_grad_(True)  # trained in full, after peft froze everything but its adapters
        self.backend = backend
        self.net = backend.with_trainable(self.module)
        self.history, self.previous = history, previous

    def running(self, module: nn.Module) -> NoiseRefiner:
        """This refiner with `module` (its adapted module's merged copy) in place of its adapted module."""
        view = copy.copy(self)
        view.net = self.backend.with_trainable(module)
        return view

    def new_cache(self, batch: int) -> KVCache:
        """The refiner's own history of one rollout (kept in its context's state)."""
        return self.net.new_cache(batch)

    def commit(self, x0: torch.Tensor, cond: Cond, cache: KVCache, ledger: Ledger) -> None:
        """Append a clean chunk to the refiner's own history (a no_grad pass of the backend's commit)."""
        if self.history:
            ledger.cache_passes += x0.shape[0]
            self.net.commit(x0, cond, cache)

    def __call__(self, eps: torch.Tensor, sigma: float, cond: Cond, history: KVCache, frame: int,
                 previous: torch.Tensor | None, ledger: Ledger) -> torch.Tensor:
        """Δε for the noise `eps` (B, F, C, H, W) of the chunk starting at latent frame `frame`, to be
        mixed at level `sigma`, given the refiner's history cache and the previous step's denoised
        output (None: there is none)."""
        b, f = eps.shape[:2]
        cache = history if self.history else self.net.new_cache(b, start=frame)
        extra = None
        if self.previous and previous is not None:
            ledger.cache_passes += b
            with torch.no_grad():
                clean = torch.zeros(b, f, dtype=torch.float64, device=eps.device)
                _, extra = self.net.chunk_forward(previous, clean, cond, cache)
        ledger.refiner_calls += b
        ledger.nfe += b  # the paper's units: a refiner call is one NFE
        level = torch.full((b, f), timestep_of(sigma), dtype=torch.float64, device=eps.device)
        delta, _ = self.net.chunk_forward(eps, level, cond, cache, extra)
        return delta.to(eps.dtype)


class TrainedMethod(Method):
    """A method with trained weights: LoRA adapters on the base denoiser, or a noise refiner.

    Architecture settings (`arch_defaults`: rank, alpha, a refiner's switches) are fixed by the
    checkpoint: one left None takes the checkpoint's value, or the default when untrained or
    training; one set explicitly must agree with the checkpoint. checkpoint None is the untrained
    adapter, which samples exactly like `base` (at a refiner's extra cost). `merge` is a sampling
    setting, not architecture (module docstring): it is described, never stored in a checkpoint.

    Training API (harness.train.trainer): trainable_parameters, adapter_state, load_adapter_state,
    exit_steps (Algorithm 1's choice of the step that carries the gradient), regulariser.
    """

    arch_defaults: ClassVar[dict[str, Any]] = {"rank": DEFAULT_RANK, "alpha": None}
    legacy_arch: ClassVar[dict[str, Any]] = {}  # the value of a setting that files older than it had

    def prepare(self, spec: ModelSpec, sampler: Sampler, weights_dir: Path) -> None:
        super().prepare(spec, sampler, weights_dir)
        given = {k: getattr(self.params, k) for k in self.arch_defaults}
        completed = self.complete(given, sampler)
        self.adapter: AdapterFile | None = None
        if self.params.checkpoint:
            self.adapter = load_adapter(self.name, self.params.checkpoint, spec.name)
            stored = {**self.legacy_arch, **self.adapter.arch}
            conflicts = [f"{k}={completed[k]!r} (checkpoint: {stored.get(k)!r})" for k in given
                         if given[k] is not None and completed[k] != stored.get(k)]
            if conflicts:
                raise UsageError(f"method.params {', '.join(conflicts)} disagree with checkpoint "
                                 f"{self.adapter.path}; leave them null to take the checkpoint's, or give a "
                                 "checkpoint trained with them")
            completed = stored
        self.arch = completed
        self.check(spec, sampler)
        self._bound: tuple[VideoModel, VideoModel] | None = None
        self._merged: tuple[tuple[int, ...], VideoModel] | None = None
        self._binding = threading.Lock()

    def complete(self, given: dict[str, Any], sampler: Sampler) -> dict[str, Any]:
        """Fill unset architecture settings with the defaults (alpha defaults to the rank)."""
        arch = {k: self.arch_defaults[k] if v is None else v for k, v in given.items()}
        arch["alpha"] = float(arch["rank"] if arch["alpha"] is None else arch["alpha"])
        return arch

    def check(self, spec: ModelSpec, sampler: Sampler) -> None:
        """Refuse settings the sampler cannot run (subclasses); called by prepare, before any compute."""

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        described["params"] = {"checkpoint": self.params.checkpoint, **self.arch, "merge": self.merges()}
        described["checkpoint_digest"] = self.adapter.digest if self.adapter else None
        return described

    # -- the weights ---------------------------------------------------------------------------
    def merges(self) -> bool:
        """Whether sampling runs the adapters merged into a copy of the adapted weights (module docstring)."""
        return self.params.merge

    def bind(self, model: VideoModel, training: bool = False) -> VideoModel:
        with self._binding:  # rollouts that share this instance build (and merge) its adapters once
            if self._bound is None or self._bound[0] is not model:
                self._bound = (model, self._build_and_load(model))
                self._merged = None
            if training or not self.merges():
                return self._bound[1]
            stamp = weights_stamp(self.adapted)
            if self._merged is None or self._merged[0] != stamp:
                self._merged = (stamp, self.sample_with(model, merged_copy(self.adapted)))
            return self._merged[1]

    def _build_and_load(self, model: VideoModel) -> VideoModel:
        if self.adapter is not None and self.adapter.base_digest != model.digest():
            raise UsageError(f"checkpoint {self.adapter.path} was trained for {self.adapter.base_model!r} weights "
                             f"with digest {self.adapter.base_digest}, not this model's ({model.digest()}); "
                             "sample with the model it was trained for, or retrain it for this one")
        sampling = self.build(model)
        if self.adapter is not None:
            self.load_adapter_state(self.adapter.state, str(self.adapter.path))
        return sampling

    def build(self, model: VideoModel) -> VideoModel:
        """Create the adapters for `model` (setting self.adapted, the module that holds them) and
        return the model that trains, and samples with the deltas."""
        raise NotImplementedError

    def sample_with(self, model: VideoModel, module: nn.Module) -> VideoModel:
        """The model that samples when `module` (self.adapted, or its merged copy) runs the adapters."""
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.adapted.parameters() if p.requires_grad]

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.adapted.named_parameters() if p.requires_grad}

    def load_adapter_state(self, state: dict[str, torch.Tensor], source: str) -> None:
        own = dict((n, p) for n, p in self.adapted.named_parameters() if p.requires_grad)
        bad = sorted(set(own) ^ set(state)) or [n for n in own if own[n].shape != state[n].shape]
        if bad:
            raise UsageError(f"{source} does not fit method {self.name!r} with {self.arch} "
                             f"({len(bad)} tensors differ, e.g. {bad[0]}); retrain it with `refinery train`")
        with torch.no_grad():
            for n, p in own.items():
                p.copy_(state[n])

    # -- training ------------------------------------------------------------------------------
    def exit_steps(self, sampler: Sampler) -> list[int]:
        """The steps a training rollout may stop at (drawn uniformly per training step)."""
        return list(range(sampler.steps))

    def begin(self, ctx: Context) -> None:
        ctx.state["penalties"] = []
        super().begin(ctx)

    def penalise(self, delta: torch.Tensor, ctx: Context) -> None:
        """Keep ½||Δε||² of a refinement that carries gradient, per video."""
        if delta.requires_grad:
            ctx.state["penalties"].append(0.5 * delta.pow(2).flatten(1).sum(1))

    def regulariser(self, result: RolloutResult) -> torch.Tensor | None:
        """A rollout's L2 regulariser: summed over its chunks, averaged over its videos."""
        penalties = result.state.get("penalties")
        return torch.stack(penalties).sum(0).mean() if penalties else None


class TrainedGenerator(TrainedMethod):
    """A trained method whose adapted denoiser is the generator, trained as Self-Forcing trains its own:
    a training rollout runs without gradient and stops every chunk at its exit step, whose denoising
    call alone carries the gradient (LoRA, and the students of `refinery distill`)."""

    def denoise(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        with torch.set_grad_enabled(ctx.training and ctx.is_last_step):
            return super().denoise(x, ctx)


class RefinerMethod(TrainedMethod):
    """A trained method whose weights are a NoiseRefiner (`self.refiner`, which `build` creates) beside
    the base model, which samples: a rollout's refiner, its merged copy when sampling merges, and the
    refiner's own history cache live in the rollout's context."""

    def sample_with(self, model: VideoModel, module: nn.Module) -> VideoModel:
        # the adapted module already runs in self.refiner, and a second view of one module would take its
        # attention processors over (the wan_causal backend's), leaving the first view's context unread
        self.sampling_refiner = self.refiner if module is self.adapted else self.refiner.running(module)
        return model

    def begin(self, ctx: Context) -> None:
        super().begin(ctx)
        ctx.state["refiner"] = self.refiner if ctx.training else self.sampling_refiner
        ctx.state["refiner_cache"] = ctx.state["refiner"].new_cache(ctx.cache.batch)

    def refine(self, eps: torch.Tensor, sigma: float, previous: torch.Tensor | None, ctx: Context) -> torch.Tensor:
        """Δε for the noise `eps` of the current chunk, to be mixed at level `sigma` (NoiseRefiner.__call__)."""
        return ctx.state["refiner"](eps, sigma, ctx.cond, ctx.state["refiner_cache"], ctx.cache.frames, previous,
                                    ctx.ledger)

    def commit(self, x0: torch.Tensor, ctx: Context) -> None:
        super().commit(x0, ctx)
        ctx.state["refiner"].commit(x0, ctx.cond, ctx.state["refiner_cache"], ctx.ledger)
