"""Dynamic degree as frame similarity: SSIM and PSNR between frames a fixed interval apart.

AutoRefiner (Table 7) measures how much a video moves by the similarity of frames 5 apart; lower
similarity means more motion. `ssim` and `psnr` are vectorised over many image pairs at once and
match scikit-image's `structural_similarity(a, b, channel_axis=-1, data_range=255)` and
`peak_signal_noise_ratio(a, b, data_range=255)`, so other metrics can reuse them.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch

from harness.errors import UsageError
from metrics.base import Metric, VideoBatch

DATA_RANGE = 255.0
# skimage returns inf for identical images, which would make every mean over pairs infinite. 100 dB
# is the MSE 255**2 * 1e-10, far below any visible difference; every smaller MSE (0 included)
# scores exactly this.
PSNR_CAP_DB = 100.0
WIN_SIZE = 7  # skimage's default uniform window
K1, K2 = 0.01, 0.03
# Pixel values (pairs x H x W x 3) per chunk: small enough that the moment maps stay in the CPU's
# cache (fastest at about 32 pairs of 32x32 frames on 2 threads, benchmarks/bench_dynamics.py),
# which matters more than batching further.
_CHUNK_ELEMENTS = 100_000


def _as_nchw_centred(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) in [0, 255] -> float32 (N, 3, H, W) in [-0.5, 0.5]. Centred, float32 is exact
    enough: uxx - ux**2 of values within +-0.5 loses ~1e-8 against the constant c2 = 9e-4."""
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) images, got shape {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2).float().div(DATA_RANGE).sub(0.5)


def _window_means(t: torch.Tensor) -> torch.Tensor:
    """Means over every WIN_SIZE x WIN_SIZE window inside the last two dims, as two matrix products
    with banded 0/1 matrices (one per axis): BLAS runs them far faster than 49 reads per pixel."""
    h, w = t.shape[-2:]
    rows, cols = _band(h).to(t), _band(w).to(t)
    return rows.T @ t @ cols / WIN_SIZE**2


def _band(n: int) -> torch.Tensor:
    """(n, n - WIN_SIZE + 1): column j sums elements j .. j + WIN_SIZE - 1."""
    i = torch.arange(n)[:, None] - torch.arange(n - WIN_SIZE + 1)[None, :]
    return ((i >= 0) & (i < WIN_SIZE)).float()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of each image pair, (N, H, W, 3) x2 -> (N,) float64, as skimage's defaults.

    skimage averages the SSIM map only where the 7x7 window lies inside the image (it crops
    (win_size - 1) // 2 from each border), so unpadded window means give exactly that region.
    """
    if a.shape != b.shape:
        raise ValueError(f"ssim needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    if min(a.shape[1], a.shape[2]) < WIN_SIZE:
        raise ValueError(f"ssim needs images of at least {WIN_SIZE}x{WIN_SIZE}, got {tuple(a.shape)}")
    x, y = _as_nchw_centred(a), _as_nchw_centred(b)
    ux, uy, uxx, uyy, uxy = _window_means(torch.stack([x, y, x * x, y * y, x * y]))
    np_win = WIN_SIZE**2
    cov_norm = np_win / (np_win - 1)  # skimage's use_sample_covariance=True
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    ux, uy = ux + 0.5, uy + 0.5  # the means of the uncentred images (data range 1)
    c1, c2 = K1**2, K2**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.double().mean(dim=(1, 2, 3))  # channels weigh equally, as skimage's per-channel mean


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each image pair, (N, H, W, 3) x2 -> (N,) float64, capped at PSNR_CAP_DB."""
    if a.shape != b.shape:
        raise ValueError(f"psnr needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    diff = a.to(torch.float64) - b.to(torch.float64)
    mse = diff.square().flatten(1).mean(dim=1)
    floor = DATA_RANGE**2 * 10 ** (-PSNR_CAP_DB / 10)
    return 10 * torch.log10(DATA_RANGE**2 / mse.clamp_min(floor))


def device_option(metric: str, options: dict[str, Any]) -> torch.device:
    """The `device` option; the caller picks it, CPU by default so scoring never competes with a GPU job."""
    try:
        return torch.device(options.get("device", "cpu"))
    except (RuntimeError, TypeError) as err:
        raise UsageError(f"{metric}: bad device option {options.get('device')!r}: {err}") from err


class Dynamics(Metric):
    name: ClassVar[str] = "dynamics"
    version: ClassVar[str] = "1"
    higher_is_better: ClassVar[dict[str, bool]] = {"ssim": False, "psnr": False}
    description: ClassVar[str] = (
        "Mean SSIM (skimage defaults, 7x7 uniform window) and PSNR (dB, capped at 100) over frame "
        "pairs (f, f+interval), interval 5 by default as in AutoRefiner Table 7; lower = more motion."
    )

    def __init__(self, **options: Any):
        interval = options.get("interval", 5)
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise UsageError(f"{self.name}: interval must be a positive integer, got {interval!r}")
        self.interval = interval
        self.device = device_option(self.name, options)
        super().__init__(**options)

    def score(self, batch: VideoBatch) -> dict[str, np.ndarray]:
        first, later = self._frame_pairs(batch.videos)
        ssims, psnrs = self._pairwise(first, later)
        shape = self._per_video(batch.videos)
        return {"ssim": ssims.reshape(shape).mean(axis=1), "psnr": psnrs.reshape(shape).mean(axis=1)}

    def _frame_pairs(self, videos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frames f and f + interval of every video, each flattened to (B * pairs, H, W, 3), video-major."""
        b, f = videos.shape[:2]
        if f < self.interval + 1:
            raise UsageError(
                f"{self.name}: interval {self.interval} needs videos of at least {self.interval + 1} "
                f"frames, got {f}; lower the interval option"
            )
        pairs = f - self.interval
        first = videos[:, : pairs].reshape(b * pairs, *videos.shape[2:])
        later = videos[:, self.interval :].reshape(b * pairs, *videos.shape[2:])
        return first, later

    def _per_video(self, videos: np.ndarray) -> tuple[int, int]:
        """(videos, pairs per video): the shape that per-pair values reshape to."""
        return len(videos), videos.shape[1] - self.interval

    def _chunks(self, a: np.ndarray, b: np.ndarray,
                elements: int = _CHUNK_ELEMENTS) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The pairs as tensors on the device, about `elements` pixel values at a time, so memory stays bounded."""
        per_pair = int(np.prod(a.shape[1:]))
        step = max(1, elements // per_pair)
        for start in range(0, len(a), step):
            yield (torch.tensor(a[start : start + step], device=self.device),
                   torch.tensor(b[start : start + step], device=self.device))

    def _pairwise(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """SSIM and PSNR of every pair."""
        ssims, psnrs = [], []
        for x, y in self._chunks(a, b):
            ssims.append(ssim(x, y).cpu().numpy())
            psnrs.append(psnr(x, y).cpu().numpy())
        return np.concatenate(ssims), np.concatenate(psnrs)
