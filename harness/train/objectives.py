"""Training objectives of `refinery train`, registered in harness.engine.registry.OBJECTIVES.

An objective turns one training rollout (harness.engine.rollout with an exit step: videos and latents that
are differentiable where the method made them so) into the loss the method's parameters minimise,
and may keep its own trained state (DMD's fake score), which resumes with the run. Its random numbers
(DMD's levels and noises, the reward's sampled frames) are drawn for the step's whole effective batch
before any rollout (`draw`), so that micro-batches and ranks each read their own rows of one draw
(harness.train.distributed).

- `reward`: a weighted mixture of differentiable verifiers (harness.engine.registry.VERIFIERS) on the decoded
  videos, maximised: loss = -Σ_k w_k R_k(video), averaged over the batch. The default is the shapes
  world's learned reward; a real reward model (HPSv2, CLIPScore, InternVideo2 on Wan) is a verifier with
  `differentiable = True` and plugs in by name. The paper's weights: InternVideo2 0.25, HPSv2.1 0.1,
  CLIP 0.1 (Appendix B).
- `dmd`: distribution matching distillation as Self-Forcing computes it (model/dmd.py):
    sigma ~ U[min_sigma, max_sigma] per video, the same for every frame, after the timestep shift
    (`timestep_shift`; null: the sampler's, as Self-Forcing's timestep_shift is its sampler's);
    x_t = (1 - sigma) x + sigma eps for the rollout's clean latents x;
    x0_real = x0_c + g (x0_c - x0_u), the base model with CFG in Self-Forcing's form (g = real_guidance;
              g = 3 is Self-Forcing's guidance_scale 3.0, i.e. w = 4 in u + w (c - u));
    x0_fake = the fake score, no guidance;
    grad = (x0_fake - x0_real) / mean |x - x0_real| (per video, over frames, channels and pixels), nan -> 0;
    loss = 0.5 * mean((x - sg(x - grad))^2), in float64, so d loss / dx = grad / numel.
  The two score networks come from the backend (TrainableBackend.dmd_scores): on Self-Forcing the real
  score is Wan2.1-T2V-14B and the fake score Wan2.1-T2V-1.3B, bidirectional models from local folders;
  on the toy, its own denoiser over whole clips (the block-causal pass diffusion forcing trained) and a
  copy of it (a distilled toy's teacher, harness.models.toy). The fake score (the critic) is trained
  online as Self-Forcing trains it (trainer/distillation.py, dfake_gen_update_ratio 5): after every
  generator step, `fake_updates` (5) critic steps, each on a fresh rollout of the updated generator
  (new prompts, seeds and exit step), with the flow loss ||v(x_t) - (eps - x)||^2 at a fresh
  (sigma, eps), AdamW with betas (0, 0.999). The generator is fixed during those steps, so their
  fresh rollouts are made before them, `fresh_batch` (default: all) in one batched call.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F

from harness.errors import UsageError
from harness.engine.method import build_params
from harness.engine.schema import option
from harness.models.base import Cond, ModelSpec, ScoreNet, VideoModel, shift_sigmas
from harness.engine.context import RolloutResult
from harness.engine.samplers import Sampler
from harness.train.checkpoints import section
from harness.train.distributed import Split
from harness.train.scale import load_network_state, network_state
from harness.verifiers.base import Verifier

Loss = tuple[torch.Tensor, dict[str, float]]  # the loss to minimise, figures for the training log
# (ks, rows) -> for each k of ks, the latents of the k-th fresh rollout's rows (of its draw) and their prompts
Sample = Callable[[list[int], list[int]], list[tuple[torch.Tensor, list[str]]]]
Draws = dict[str, torch.Tensor]  # a step's random numbers, one row per video of the effective batch


def pick(draws: Draws, rows: list[int]) -> Draws:
    """The draws of some videos of the batch (a rank's or a micro-batch's rows)."""
    index = torch.tensor(rows, dtype=torch.long)
    return {k: v[index] for k, v in draws.items()}


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Objective:
    name: ClassVar[str]
    Params: ClassVar[type]
    needs_videos: ClassVar[bool] = True  # False: the loss reads latents only, and rollouts skip decoding

    def __init__(self, **params: Any):
        self.params = build_params(self.Params, params, "train.objective.params")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "params": asdict(self.params)}

    def setup(self, model: VideoModel, sampler: Sampler, weights_dir: Path) -> None:
        """Before any compute: load what the objective reads, refuse what it cannot train with."""

    def draw(self, spec: ModelSpec, n: int, gen: torch.Generator) -> Draws:
        """Every random number the step's loss and update use, for the whole effective batch of `n`
        videos, drawn from the step's generator before any rollout: every rank and micro-batch then
        reads its own rows of the same draw."""
        return {}

    def loss(self, result: RolloutResult, prompts: list[str], draws: Draws) -> Loss:
        """The loss to minimise (the mean over the result's videos) and the figures to log; `draws`
        are those videos' rows of `draw`."""
        raise NotImplementedError

    def update(self, draws: Draws, sample: Sample, split: Split) -> dict[str, float]:
        """After the method's step: train the objective's own state on fresh rollouts from `sample`
        (harness.train.trainer.Fresh), over this rank's micro-batches (`split`); figures to log."""
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The objective's trained state as flat tensors (DTensors where sharded), for the step folders."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what state_dict returned (a resumed run), loaded in place into a fresh state_dict."""


# ---------------------------------------------------------------------------------------------
# reward


@dataclass(frozen=True)
class RewardParams:
    verifiers: dict[str, float] = field(default_factory=lambda: {"world_reward": 1.0})  # name: weight
    image_frames: int | None = None  # frames drawn per video for image rewards (input "frames"); None: all
    clip_frames: int | None = None  # frames of the clip cut for video rewards (input "video"); None: all
    clip_interval: int = 1  # frames between a clip's frames

    def __post_init__(self) -> None:
        if not isinstance(self.verifiers, dict) or not all(_finite(w) for w in self.verifiers.values()) \
                or not any(self.verifiers.values()):
            raise UsageError(f"train.objective.params.verifiers={self.verifiers!r} is malformed; give a mapping "
                             "of verifier name to finite weight, at least one non-zero, e.g. {world_reward: 1.0}")
        for key in ("image_frames", "clip_frames", "clip_interval"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UsageError(f"train.objective.params.{key}={value!r} is out of range; use an integer >= 1"
                                 f"{'' if key == 'clip_interval' else ' (null: every frame)'}")


class RewardObjective(Objective):
    name = "reward"
    Params = RewardParams

    def setup(self, model: VideoModel, sampler: Sampler, weights_dir: Path) -> None:
        from harness.engine.registry import VERIFIERS

        self.verifiers = {}
        for name, weight in self.params.verifiers.items():
            if not weight:
                continue  # weight 0 takes a verifier out of the mixture (Hydra merges mappings)
            cls = VERIFIERS.get(name)
            if not cls.differentiable:
                raise UsageError(f"verifier {name!r} is not differentiable, and reward training needs gradients "
                                 "from the score to the pixels; choose a differentiable verifier")
            self.verifiers[name] = (cls(weights_dir), float(weight))
        self.model = model
        # decode only the sampled frames when every verifier samples some and the backend can
        f = model.spec.video_frames
        sampling = all(self.frames_index(v, 1, f, torch.Generator()) is not None for v, _ in self.verifiers.values())
        self.needs_videos = not (sampling and callable(getattr(model, "decode_frames", None)))

    def frames_index(self, verifier: Verifier, n: int, f: int, gen: torch.Generator) -> torch.Tensor | None:
        """Which of a video's `f` frames a verifier scores (AutoRefiner Appendix B), (n, k) per video:
        an image reward `image_frames` frames drawn at random per video, a video reward one clip of
        `clip_frames` frames `clip_interval` apart at a random start (the interval shrinks to fit a
        shorter video); None: every frame."""
        p = self.params
        if verifier.input == "frames" and p.image_frames is not None and p.image_frames < f:
            return torch.stack([torch.randperm(f, generator=gen)[: p.image_frames].sort().values for _ in range(n)])
        if verifier.input == "video" and p.clip_frames is not None and p.clip_frames < f:
            step = min(p.clip_interval, (f - 1) // max(p.clip_frames - 1, 1))
            span = step * (p.clip_frames - 1)
            starts = torch.randint(f - span, (n,), generator=gen)
            return starts[:, None] + step * torch.arange(p.clip_frames)
        return None

    def frames_for(self, verifier: Verifier, videos: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The frames of `videos` (n, f, ...) a verifier scores, drawn from `gen`."""
        index = self.frames_index(verifier, videos.shape[0], videos.shape[1], gen)
        return videos if index is None else videos[torch.arange(videos.shape[0])[:, None], index.to(videos.device)]

    def draw(self, spec: ModelSpec, n: int, gen: torch.Generator) -> Draws:
        draws = {}
        for name, (verifier, _) in self.verifiers.items():
            index = self.frames_index(verifier, n, spec.video_frames, gen)
            if index is not None:
                draws[f"frames.{name}"] = index
        return draws

    def sampled_frames(self, result: RolloutResult, draws: Draws) -> dict[str, torch.Tensor]:
        """Each verifier's frames (n, k, 3, H, W): cut from the rollout's videos, or, when the rollout
        skipped decoding (every verifier samples frames), decoded from its latents, those frames only
        (the backend's `decode_frames`: chunked and checkpointed through a causal VAE's state)."""
        n = result.latents.shape[0]
        rows = torch.arange(n)[:, None]
        if result.videos is not None:
            return {name: result.videos if f"frames.{name}" not in draws else
                    result.videos[rows, draws[f"frames.{name}"].to(result.videos.device)] for name in self.verifiers}
        needed = sorted({int(i) for k, v in draws.items() if k.startswith("frames.") for i in v.flatten()})
        decoded = self.model.decode_frames(result.latents, needed)  # (n, len(needed), 3, H, W)
        position = torch.full((max(needed) + 1,), -1, dtype=torch.long)
        position[needed] = torch.arange(len(needed))
        return {name: decoded[rows, position[draws[f"frames.{name}"]].to(decoded.device)] for name in self.verifiers}

    def loss(self, result: RolloutResult, prompts: list[str], draws: Draws) -> Loss:
        total = 0.0
        figures = {}
        frames = self.sampled_frames(result, draws)
        for name, (verifier, weight) in self.verifiers.items():
            score = verifier.score(frames[name], prompts)
            figures[f"reward.{name}"] = score.mean().item()
            total = total + weight * score
        figures["reward"] = total.mean().item()
        return -total.mean(), figures


# ---------------------------------------------------------------------------------------------
# DMD


@dataclass(frozen=True)
class DmdParams:
    real_guidance: float = 3.0  # g in x0_c + g (x0_c - x0_u) (Self-Forcing's guidance_scale)
    min_sigma: float = 0.02  # Self-Forcing clamps timesteps to [20, 980]
    max_sigma: float = 0.98
    fake_lr: float = 1e-4
    fake_updates: int = option(5, min=1)  # critic steps per generator step, each on a fresh rollout (Self-Forcing's ratio)
    timestep_shift: float | None = None  # the shift of the score evaluations' levels; None: the sampler's
    fresh_batch: int | None = option(None, min=1)  # fresh rollouts made in one batched call (None: all; 1: one by one)

    def __post_init__(self) -> None:
        if not _finite(self.real_guidance) or self.real_guidance < 0:
            raise UsageError(f"train.objective.params.real_guidance={self.real_guidance!r} is out of range; "
                             "use >= 0")
        if not (_finite(self.min_sigma) and _finite(self.max_sigma) and 0 < self.min_sigma <= self.max_sigma < 1):
            raise UsageError(f"train.objective.params min_sigma={self.min_sigma!r}, max_sigma={self.max_sigma!r} "
                             "are out of range; use 0 < min_sigma <= max_sigma < 1")
        if not _finite(self.fake_lr) or self.fake_lr <= 0:
            raise UsageError(f"train.objective.params.fake_lr={self.fake_lr!r} is out of range; use a rate > 0")
        if self.timestep_shift is not None and (not _finite(self.timestep_shift) or self.timestep_shift <= 0):
            raise UsageError(f"train.objective.params.timestep_shift={self.timestep_shift!r} is out of range; "
                             "use a shift > 0 (null: the sampler's)")


def x0_of(score: ScoreNet, x_t: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
    return x_t - sigma.view(-1, 1, 1, 1, 1).to(x_t.dtype) * score.velocity(x_t, sigma, cond).to(x_t.dtype)


class DmdObjective(Objective):
    name = "dmd"
    Params = DmdParams
    needs_videos = False

    def setup(self, model: VideoModel, sampler: Sampler, weights_dir: Path) -> None:
        if not callable(getattr(model, "dmd_scores", None)):
            raise UsageError(f"objective 'dmd' needs the real and fake score networks of a trainable backend; "
                             f"model {model.spec.name!r} has none")
        if not model.spec.has_uncond:
            raise UsageError(f"objective 'dmd' guides its real score with CFG, and model {model.spec.name!r} "
                             "has no unconditional branch")
        self.model = model
        self.shift = sampler.shift if self.params.timestep_shift is None else self.params.timestep_shift
        self.real, self.fake = model.dmd_scores(weights_dir)
        self.fake.module.requires_grad_(True)
        self.fake_opt = self.critic_optimizer()

    def critic_optimizer(self) -> torch.optim.Optimizer:
        """AdamW over the fake score's parameters (built again once FSDP has sharded them)."""
        return torch.optim.AdamW(self.fake.module.parameters(), lr=self.params.fake_lr, betas=(0.0, 0.999),
                                 weight_decay=0.0)

    def draw(self, spec: ModelSpec, n: int, gen: torch.Generator) -> Draws:
        """Per video: the level and noise of the loss's score evaluations, then of each critic update's
        (the order in which the step's generator has always been read)."""
        shape = (n, spec.num_latent_frames, *spec.latent_shape)
        draws = {}
        for key in ["loss", *(f"fake.{k}" for k in range(self.params.fake_updates))]:
            draws[f"{key}.u"] = torch.rand(n, generator=gen)
            draws[f"{key}.eps"] = torch.randn(shape, generator=gen)
        return draws

    def noised(self, x: torch.Tensor, u: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(x_t, sigma, eps) at a level per video, as Self-Forcing draws them, from uniform numbers `u`
        and standard normal noise `eps` drawn on the CPU (the same numbers on every device)."""
        p = self.params
        u = p.min_sigma + (p.max_sigma - p.min_sigma) * u
        sigma = shift_sigmas(u, self.shift).clamp(p.min_sigma, p.max_sigma).to(x.device)
        eps = eps.to(device=x.device, dtype=x.dtype)
        s = sigma.view(-1, 1, 1, 1, 1).to(x.dtype)
        return (1 - s) * x + s * eps, sigma, eps

    def loss(self, result: RolloutResult, prompts: list[str], draws: Draws) -> Loss:
        x = result.latents
        with torch.no_grad():
            cond, uncond = self.model.encode(prompts), self.model.encode([""] * len(prompts))
            x_t, sigma, _ = self.noised(x.detach(), draws["loss.u"], draws["loss.eps"])
            x0_fake = x0_of(self.fake, x_t, sigma, cond)
            x0_c = x0_of(self.real, x_t, sigma, cond)
            x0_u = x0_of(self.real, x_t, sigma, uncond)
            x0_real = x0_c + self.params.real_guidance * (x0_c - x0_u)
            norm = (x.detach() - x0_real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
            grad = torch.nan_to_num((x0_fake - x0_real) / norm)
        loss = 0.5 * F.mse_loss(x.double(), (x.detach() - grad).double())
        return loss.float(), {"dmd_grad": grad.abs().mean().item()}

    def update(self, draws: Draws, sample: Sample, split: Split) -> dict[str, float]:
        losses = []
        parameters = list(self.fake.module.parameters())
        # the generator does not change during the critic's steps: their fresh rollouts are made first
        fresh = [self.fresh_rollouts(sample, rows) for rows in split.parts]
        for k in range(self.params.fake_updates):
            self.fake_opt.zero_grad(set_to_none=True)
            weighted = 0.0
            for rows, made in zip(split.parts, fresh):
                x, fresh_prompts = made[k]
                cond = self.model.encode(fresh_prompts)
                mine = pick(draws, rows)
                x_t, sigma, eps = self.noised(x, mine[f"fake.{k}.u"], mine[f"fake.{k}.eps"])
                precision = torch.promote_types(x.dtype, torch.float32)  # fp32 at least (fp64 stays)
                loss = F.mse_loss(self.fake.velocity(x_t, sigma, cond).to(precision), (eps - x).to(precision))
                (loss * split.share(rows)).backward()
                weighted += split.share(rows) * loss.item()
            split.world.sum_gradients(parameters)
            self.fake_opt.step()
            losses.append(weighted)
        return {"fake_loss": sum(losses) / len(losses)}

    def fresh_rollouts(self, sample: Sample, rows: list[int]) -> list[tuple[torch.Tensor, list[str]]]:
        """Every critic step's fresh rollout of `rows`, `fresh_batch` (default: all) asked for at a time."""
        updates = list(range(self.params.fake_updates))
        at_a_time = self.params.fresh_batch or len(updates)
        return [made for i in range(0, len(updates), at_a_time) for made in sample(updates[i:i + at_a_time], rows)]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The fake score and its optimiser, sharded where FSDP shards them: torch.distributed.checkpoint
        saves them from any number of ranks and loads them on any other (harness.train.checkpoints)."""
        return {f"fake.{k}": v for k, v in network_state(self.fake.module, self.fake_opt).items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_network_state(self.fake.module, self.fake_opt, section(state, "fake."))
