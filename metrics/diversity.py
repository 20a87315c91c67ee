"""`dino_diversity`: sample diversity as AutoRefiner Table 7 defines it (lower = more diverse).

A video's embedding is the mean of its frames' embeddings; the diversity of a prompt is the mean
cosine similarity over all pairs of its videos. Similarity is a per-prompt quantity, but a metric
keeps one value per video, so each video gets its mean similarity to the other videos of its
prompt. Since similarity is symmetric, the mean of those values over a prompt's videos is exactly
the mean over its pairs, and with the same number of videos per prompt (as every cell has: prompts
x seeds) the mean over all videos is the paper's number, the mean over prompts. A prompt with one
video has no pair: its value is NaN, which reports leave out. Videos are grouped by the exact
prompt text in their records, across every update() of a run (pipeline.score feeds a cell in
batches that can split a prompt's videos), so the values come out of compute().

Two backbones, named in the output, so that one is never read as the other:

- `world_probe` (default; offline on the embedded world) -> `world_probe_similarity`: the world
  probe's frame embeddings (harness/world/probe.py). It is NOT DINO.
- `dino` -> `dino_vitb16_similarity`: timm's `vit_base_patch16_224.dino` (DINO ViT-B/16, the CLS
  token), created with pretrained=False and loaded from a local safetensors file under
  paths.weights. Frames are resized so the shorter side is 224, aspect kept (as VBench feeds DINO),
  and normalised with ImageNet's mean and std.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import UsageError
from harness.engine.schema import option
from harness.world.probe import PROBE_WEIGHTS, load_probe
from harness.engine.metric import Metric, VideoBatch, WeightFile
from metrics.dynamics import device_option

DINO_ARCH = "vit_base_patch16_224.dino"
DINO_VITB16 = WeightFile(
    "timm/vit_base_patch16_224.dino.safetensors",
    "https://huggingface.co/timm/vit_base_patch16_224.dino (model.safetensors, saved under this name)",
)
DINO_SHORT_SIDE = 224
OUTPUTS = {"world_probe": "world_probe_similarity", "dino": "dino_vitb16_similarity"}
_FRAME_BATCH = 32  # frames per ViT call

Embedder = Callable[[np.ndarray], torch.Tensor]  # uint8 videos (B, F, H, W, 3) -> (B, F, D)


def similarity_to_others(embeddings: torch.Tensor, prompts: list[str]) -> np.ndarray:
    """Each video's mean cosine similarity to the other videos of its prompt; NaN for a lone video.

    embeddings (N, D), one row per video, in the order of `prompts`."""
    unit = F.normalize(embeddings.double(), dim=1)
    out = np.full(len(prompts), np.nan)
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(prompt, []).append(i)
    for members in groups.values():
        if len(members) < 2:
            continue
        group = unit[members]
        sims = group @ group.T
        out[members] = ((sims.sum(1) - sims.diagonal()) / (len(members) - 1)).cpu().numpy()
    return out


def build_dino(arch: str = DINO_ARCH) -> nn.Module:
    """The DINO ViT with random weights: pretrained=False, so timm fetches nothing."""
    try:
        import timm
    except ImportError:
        raise UsageError("dino_diversity: backbone=dino needs timm; run `pip install timm`") from None
    return timm.create_model(arch, pretrained=False, num_classes=0, dynamic_img_size=True)


def load_dino(path: Path, arch: str) -> nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model = build_dino(arch)
    try:
        model.load_state_dict(load_file(str(path)))
    except (SafetensorError, OSError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"{path} does not hold {arch}'s weights ({reason}); replace it with "
                         f"{DINO_VITB16.origin}") from None
    return model.eval().requires_grad_(False)


def vit_embedder(model: nn.Module, device: torch.device) -> Embedder:
    """Per-frame CLS embeddings of a timm ViT."""
    cfg = model.pretrained_cfg
    mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1)
    model = model.to(device)

    @torch.no_grad()
    def embed(videos: np.ndarray) -> torch.Tensor:
        b, f, h, w = videos.shape[:4]
        scale = DINO_SHORT_SIDE / min(h, w)
        size = (round(h * scale), round(w * scale))
        frames = torch.as_tensor(videos).flatten(0, 1)
        out = []
        for start in range(0, len(frames), _FRAME_BATCH):
            x = frames[start: start + _FRAME_BATCH].to(device).permute(0, 3, 1, 2).float() / 255
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
            out.append(model((x - mean) / std))
        return torch.cat(out).view(b, f, -1)
    return embed


def prompts_of(metric: str, batch: VideoBatch) -> list[str]:
    try:
        return [str(r["prompt"]) for r in batch.records]
    except KeyError:
        raise UsageError(f"{metric}: every video's record needs its prompt; these records have none") from None


@dataclass(frozen=True)
class DiversityOptions:
    backbone: str = option("world_probe", choices=tuple(OUTPUTS))
    device: str = "cpu"


class Diversity(Metric):
    name: ClassVar[str] = "dino_diversity"
    version: ClassVar[str] = "1"
    # every backbone's output; an instance produces only its backbone's (see __init__)
    higher_is_better: ClassVar[dict[str, bool]] = {output: False for output in OUTPUTS.values()}
    description: ClassVar[str] = (
        "Mean cosine similarity of frame-averaged embeddings to the other videos of the same prompt "
        "(AutoRefiner Table 7); world_probe (default) or dino (DINO ViT-B/16) backbone; lower = more diverse."
    )
    needs: ClassVar[tuple[str, ...]] = ("prompt",)
    weights: ClassVar[tuple[WeightFile, ...]] = (PROBE_WEIGHTS, DINO_VITB16)
    Options: ClassVar[type] = DiversityOptions

    def __init__(self, weights_dir: str | Path = "weights", **options: Any):
        typed = self.check_options(options)
        self.backbone = typed.backbone
        self.output = OUTPUTS[self.backbone]
        self.higher_is_better = {self.output: False}  # what compute() returns, and so what is stored
        self.device = device_option(self.name, typed.device)
        super().__init__(weights_dir, **options)  # checks the weight files
        self.embed: Embedder
        if self.backbone == "dino":
            self.embed = vit_embedder(load_dino(self.weight_path(DINO_VITB16), DINO_ARCH), self.device)
        else:
            self.embed = load_probe(self.weight_path(PROBE_WEIGHTS)).to(self.device).features

    @classmethod
    def required_weights(cls, options: dict[str, Any]) -> tuple[WeightFile, ...]:
        return (DINO_VITB16,) if cls.check_options(options).backbone == "dino" else (PROBE_WEIGHTS,)

    def reset(self) -> None:
        self._embeddings: list[torch.Tensor] = []
        self._prompts: list[str] = []

    def update(self, batch: VideoBatch) -> None:
        prompts = prompts_of(self.name, batch)  # checked before any compute
        self._embeddings.append(self.video_embeddings(batch.videos))
        self._prompts += prompts

    def compute(self) -> dict[str, np.ndarray]:
        """Per-video values, in update order, grouped by prompt over every update since reset."""
        if not self._prompts:
            return {self.output: np.empty(0)}
        return {self.output: similarity_to_others(torch.cat(self._embeddings), self._prompts)}

    def score(self, batch: VideoBatch) -> dict[str, np.ndarray]:
        """Values from this batch alone: each video is compared only with its prompt's videos here."""
        return {self.output: similarity_to_others(self.video_embeddings(batch.videos), prompts_of(self.name, batch))}

    def video_embeddings(self, videos: np.ndarray) -> torch.Tensor:
        """(B, D) on the CPU: the mean of each video's frame embeddings, as the paper averages them."""
        return self.embed(videos).mean(1).double().cpu()
