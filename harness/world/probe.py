"""The world probe: a small feature network for the shapes world, the offline stand-in for DINO and
LPIPS's AlexNet when feature metrics run on the embedded world.

A per-frame CNN (four stages, 32x32 -> 4x4) gives per-layer feature maps (for an LPIPS-style
distance) and a per-frame embedding: its last map pooled to a 4x4 grid (so where objects are
survives) and every stage's spatial maximum (what the objects are), projected and
layer-normalised. It is trained by `harness.world.probe_train` to read the
scene from the embeddings: which (colour, shape) objects, how many, and (from the sequence of frame
embeddings) the motion, on rendered clips degraded by blur, noise and colour jitter so that it also
reads generated, blurrier videos. Its features are the world's, not DINO's or AlexNet's: metrics
that use them say `world_probe` in their output names.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.assets import asset
from harness.errors import UsageError
from harness.models.weights import WeightFile, load_safetensors, save_safetensors
from harness.world.grammar import COLOURS, MOTIONS, SHAPES, Scene, WorldObject
from harness.world.oracle import Reading

SHIPPED_WEIGHTS = asset("world", "probe.safetensors")
REBUILD = "refinery train-probe"
PROBE_WEIGHTS = WeightFile(str(SHIPPED_WEIGHTS), f"ships with the package; rebuild it with `{REBUILD}`")
OBJECTS: tuple[WorldObject, ...] = tuple(WorldObject(c, s) for c in COLOURS for s in SHAPES)
MOTION_NAMES: tuple[str, ...] = tuple(MOTIONS)
COUNTS = (1, 2)
_FRAME_BATCH = 1024  # frames per trunk call when embedding stored videos: bounds memory


@dataclass(frozen=True)
class ProbeConfig:
    widths: tuple[int, ...] = (16, 32, 48, 64)  # channels per stage; stages after the first halve the size
    embed_dim: int = 96
    grid: int = 4  # the last map is pooled to grid x grid before the embedding
    motion_width: int = 64


@dataclass(frozen=True)
class Labels:
    """A scene as training targets."""

    objects: torch.Tensor  # (N, len(OBJECTS)) multi-hot
    count: torch.Tensor  # (N,) index into COUNTS
    motion: torch.Tensor  # (N,) index into MOTION_NAMES


def scene_labels(scenes: list[Scene]) -> Labels:
    objects = torch.zeros(len(scenes), len(OBJECTS))
    for row, scene in enumerate(scenes):
        for obj in scene.objects:
            objects[row, OBJECTS.index(obj)] = 1
    count = torch.tensor([COUNTS.index(len(s.objects)) for s in scenes])
    motion = torch.tensor([MOTION_NAMES.index(s.motion) for s in scenes])
    return Labels(objects, count, motion)


def as_frames(videos: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (B, F, H, W, 3) -> float (B, F, 3, H, W) in [0, 1]."""
    v = torch.as_tensor(videos)
    if v.dtype != torch.uint8 or v.ndim != 5 or v.shape[-1] != 3:
        raise UsageError(f"the world probe reads uint8 videos (B, F, H, W, 3); got {v.dtype} {tuple(v.shape)}")
    return v.permute(0, 1, 4, 2, 3).float() / 255


def _norm(width: int) -> nn.Module:
    # without normalisation the loss sits at the label priors for hundreds of steps before it learns
    return nn.GroupNorm(4, width)


class WorldProbe(nn.Module):
    def __init__(self, cfg: ProbeConfig):
        super().__init__()
        self.cfg = cfg
        # full size first, unnormalised, so colour stays a linear read of the pixels; then stages that
        # halve the size and add a second conv, since shapes are only a few cells wide there
        stages = [nn.Sequential(nn.Conv2d(3, cfg.widths[0], 3, padding=1), nn.SiLU())]
        for c_in, width in zip(cfg.widths, cfg.widths[1:]):
            stages.append(nn.Sequential(nn.Conv2d(c_in, width, 3, stride=2, padding=1), _norm(width), nn.SiLU(),
                                        nn.Conv2d(width, width, 3, padding=1), _norm(width), nn.SiLU()))
        self.stages = nn.ModuleList(stages)
        self.embed = nn.Linear(cfg.widths[-1] * cfg.grid**2 + sum(cfg.widths), cfg.embed_dim)
        # no affine: the embedding is zero-mean per frame, so cosine similarity is not dominated by a
        # constant offset shared by every video
        self.norm = nn.LayerNorm(cfg.embed_dim, elementwise_affine=False)
        self.scene_head = nn.Sequential(nn.Linear(cfg.embed_dim, 128), nn.SiLU(),
                                        nn.Linear(128, len(OBJECTS) + len(COUNTS)))
        m = cfg.motion_width
        self.motion_head = nn.Sequential(nn.Conv1d(cfg.embed_dim, m, 3, padding=1), nn.SiLU(),
                                         nn.Conv1d(m, m, 3, padding=1), nn.SiLU())
        self.motion_out = nn.Linear(m, len(MOTION_NAMES))

    def feature_maps(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """Frames (N, 3, H, W) in [0, 1] -> each stage's output, (N, C_l, H_l, W_l)."""
        maps, h = [], frames * 2 - 1
        for stage in self.stages:
            h = stage(h)
            maps.append(h)
        return maps

    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (N, 3, H, W) in [0, 1] -> (N, embed_dim)."""
        maps = self.feature_maps(frames)
        layout = F.adaptive_avg_pool2d(maps[-1], self.cfg.grid).flatten(1)
        # objects are small: a max over space finds them at every stage, the finer ones keep colour
        peaks = [m.amax(dim=(2, 3)) for m in maps]
        return self.norm(self.embed(torch.cat([layout, *peaks], dim=1)))

    def clip_embeddings(self, clips: torch.Tensor) -> torch.Tensor:
        """Clips (B, F, 3, H, W) in [0, 1] -> per-frame embeddings (B, F, embed_dim)."""
        b, f = clips.shape[:2]
        flat = clips.flatten(0, 1)
        parts = [self.embed_frames(flat[i: i + _FRAME_BATCH]) for i in range(0, len(flat), _FRAME_BATCH)]
        return torch.cat(parts).view(b, f, -1)

    def heads(self, embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-frame embeddings (B, F, D) -> logits of the objects, the count and the motion."""
        scene = self.scene_head(embeddings.mean(1))
        motion = self.motion_head(embeddings.transpose(1, 2)).mean(2)
        return {"objects": scene[:, : len(OBJECTS)], "count": scene[:, len(OBJECTS):],
                "motion": self.motion_out(motion)}

    @torch.no_grad()
    def features(self, videos: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 videos (B, F, H, W, 3) -> per-frame embeddings (B, F, embed_dim)."""
        return self.clip_embeddings(as_frames(videos).to(self.device))

    @torch.no_grad()
    def layer_features(self, frames: np.ndarray | torch.Tensor) -> list[torch.Tensor]:
        """uint8 frames (N, H, W, 3) -> each stage's feature map (N, C_l, H_l, W_l)."""
        return self.feature_maps(as_frames(torch.as_tensor(frames)[None])[0].to(self.device))

    @torch.no_grad()
    def predict(self, videos: np.ndarray | torch.Tensor) -> list[Reading]:
        """The scene each video shows, as the probe reads it, in the oracle's Reading form (without
        per-frame detections or tracks), so `oracle.judge` scores it against a prompt."""
        logits = self.heads(self.features(videos))
        counts = [COUNTS[i] for i in logits["count"].argmax(1).tolist()]
        ranked = logits["objects"].argsort(1, descending=True).tolist()
        readings = []
        for order, count, motion in zip(ranked, counts, logits["motion"].argmax(1).tolist()):
            objects = tuple(sorted((OBJECTS[i].colour, OBJECTS[i].shape) for i in order[:count]))
            readings.append(Reading(frames=(), count=count, colours=tuple(c for c, _ in objects),
                                    shapes=tuple(s for _, s in objects), objects=objects,
                                    motion=MOTION_NAMES[motion], tracks=()))
        return readings

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def save_probe(probe: WorldProbe, path: Path, training: dict) -> None:
    save_safetensors(probe.state_dict(), path, {"probe_config": json.dumps(asdict(probe.cfg)),
                                                "training": json.dumps(training)})


def load_probe(path: Path = SHIPPED_WEIGHTS) -> WorldProbe:
    """Load only through safetensors; a missing, corrupt or mismatched file is a one-line UsageError."""
    def build(meta: dict[str, str]) -> WorldProbe:
        cfg = json.loads(meta.get("probe_config", "{}"))
        return WorldProbe(ProbeConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}))

    return load_safetensors(path, "world probe", REBUILD, build)
