"""`perceptual_dynamics`: dynamic degree as a perceptual distance between frames a fixed interval
apart (5 by default), AutoRefiner Table 7's LPIPS column; higher = more motion.

Two backbones, named in the output so that one is never read as the other:

- `world_probe` (default; offline on the embedded world) -> output `world_probe_lpips_style`: the
  LPIPS formula without learned weights (lpips' `lpips=False` baseline) on the world probe's four
  feature maps: unit-normalise each location's channel vector, square the differences, sum over
  channels, average over space, sum over layers. It is NOT LPIPS.
- `lpips` -> output `lpips_alex`: the lpips package's LPIPS v0.1 with its AlexNet trunk, frames at
  their stored size (at least 32x32, what AlexNet's pooling needs). The trunk comes from a local
  torchvision AlexNet state dict under paths.weights; lpips' linear heads ship inside its wheel.
  The network is built with a random trunk (so torchvision downloads nothing) and both files are
  then loaded with torch.load(weights_only=True), every key checked.
"""
from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import UsageError
from harness.engine.schema import option
from harness.world.probe import PROBE_WEIGHTS, WorldProbe, load_probe
from harness.engine.metric import VideoBatch, WeightFile
from metrics.dynamics import Dynamics, DynamicsOptions

ALEXNET = WeightFile(
    "lpips/alexnet-owt-7be5be79.pth",
    "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth (torchvision's AlexNet IMAGENET1K_V1 state dict)",
)
OUTPUTS = {"world_probe": "world_probe_lpips_style", "lpips": "lpips_alex"}
# Pixel values per chunk of frame pairs: a backbone's feature maps hold tens of times the frames' bytes.
_CHUNK_ELEMENTS = 1_000_000
LPIPS_MIN_SIZE = 32  # AlexNet's strides and pools leave nothing of a smaller frame

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # uint8 (N, H, W, 3) x2 -> (N,)


def lpips_style_distance(maps_a: list[torch.Tensor], maps_b: list[torch.Tensor]) -> torch.Tensor:
    """LPIPS's formula with unit channel weights over per-layer maps (N, C_l, H_l, W_l) -> (N,)."""
    total = torch.zeros(len(maps_a[0]), dtype=torch.float64, device=maps_a[0].device)
    for a, b in zip(maps_a, maps_b):
        diff = F.normalize(a.double(), dim=1, eps=1e-10) - F.normalize(b.double(), dim=1, eps=1e-10)
        total += diff.square().sum(1).mean(dim=(1, 2))
    return total


def probe_distance(probe: WorldProbe) -> Distance:
    return lambda a, b: lpips_style_distance(probe.layer_features(a), probe.layer_features(b))


@dataclass(frozen=True)
class PerceptualDynamicsOptions(DynamicsOptions):
    backbone: str = option("world_probe", choices=tuple(OUTPUTS))


def load_lpips_alex(trunk_path: Path) -> nn.Module:
    """lpips' LPIPS(net='alex', v0.1) with its trunk from `trunk_path`; no download can happen."""
    try:
        import lpips
    except ImportError:
        raise UsageError("perceptual_dynamics: backbone=lpips needs the lpips package; run `pip install lpips`") from None
    with warnings.catch_warnings():  # torchvision's notice about the legacy `pretrained` argument
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="alex", version="0.1", pretrained=False, pnet_rand=True, verbose=False)
    heads_path = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
    heads = torch.load(heads_path, map_location="cpu", weights_only=True)
    fix = f"replace it with {ALEXNET.origin}"
    try:
        features = torch.load(trunk_path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"{trunk_path} is not a readable state dict ({reason}); {fix}") from None
    # lpips splits AlexNet's `features` into slices that keep each layer's index: slice2.3 is features.3
    wanted = {f"net.{key}": f"features.{key.split('.', 1)[1]}" for key in model.net.state_dict()}
    absent = [name for name in wanted.values() if not isinstance(features, dict) or name not in features]
    if absent:
        raise UsageError(f"{trunk_path} is not an AlexNet state dict (no {absent[0]!r}); {fix}")
    trunk = {key: features[name] for key, name in wanted.items()}
    missing, unexpected = model.load_state_dict({**heads, **trunk}, strict=False)
    # the scaling layer's constants are set in __init__; each head is registered twice, as lin{i}
    # (the key in the heads file) and as lins.{i}, one parameter under two names
    unloaded = [k for k in missing if not k.startswith(("scaling_layer.", "lins."))]
    if unexpected or unloaded:
        raise UsageError(f"the lpips package's heads {heads_path} do not fit LPIPS(alex); reinstall lpips")
    return model.eval().requires_grad_(False)


def lpips_distance(model: nn.Module) -> Distance:
    def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if min(a.shape[1:3]) < LPIPS_MIN_SIZE:
            raise UsageError(f"perceptual_dynamics: LPIPS(alex) needs frames of at least "
                             f"{LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE}, got {tuple(a.shape[1:3])}; use backbone=world_probe")
        x, y = (t.permute(0, 3, 1, 2).float() / 255 for t in (a, b))
        with torch.no_grad():
            return model(x, y, normalize=True).flatten().double()
    return distance


class PerceptualDynamics(Dynamics):
    name: ClassVar[str] = "perceptual_dynamics"
    version: ClassVar[str] = "1"
    # every backbone's output; an instance produces only its backbone's (see __init__)
    higher_is_better: ClassVar[dict[str, bool]] = {output: True for output in OUTPUTS.values()}
    description: ClassVar[str] = (
        "Mean perceptual distance over frame pairs (f, f+interval), interval 5 as in AutoRefiner Table 7; "
        "world_probe_lpips_style (default, the world probe's features) or lpips_alex (LPIPS v0.1); higher = more motion."
    )
    weights: ClassVar[tuple[WeightFile, ...]] = (PROBE_WEIGHTS, ALEXNET)
    Options: ClassVar[type] = PerceptualDynamicsOptions

    def __init__(self, weights_dir: str | Path = "weights", **options: Any):
        self.backbone = self.check_options(options).backbone
        self.output = OUTPUTS[self.backbone]
        self.higher_is_better = {self.output: True}  # what compute() returns, and so what is stored
        super().__init__(weights_dir, **options)  # checks the interval, the device and the weight files
        if self.backbone == "lpips":
            self.distance = lpips_distance(load_lpips_alex(self.weight_path(ALEXNET)).to(self.device))
        else:
            self.distance = probe_distance(load_probe(self.weight_path(PROBE_WEIGHTS)).to(self.device))

    @classmethod
    def required_weights(cls, options: dict[str, Any]) -> tuple[WeightFile, ...]:
        return (ALEXNET,) if cls.check_options(options).backbone == "lpips" else (PROBE_WEIGHTS,)

    def score(self, batch: VideoBatch) -> dict[str, np.ndarray]:
        first, later = self._frame_pairs(batch.videos)
        values = [self.distance(x, y).cpu().numpy() for x, y in self._chunks(first, later, _CHUNK_ELEMENTS)]
        per_pair = np.concatenate(values) if values else np.empty(0)
        return {self.output: per_pair.reshape(self._per_video(batch.videos)).mean(axis=1)}
