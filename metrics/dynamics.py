"""Dynamic degree as frame similarity: SSIM and PSNR between frames a fixed interval apart.

AutoRefiner (Table 7) measures how much a video moves by the similarity of frames 5 apart; lower
similarity means more motion. `ssim` and `psnr` are vectorised over many image pairs at once and
match scikit-image's `structural_similarity(a, b, channel_axis=-1, data_range=255)` and
`peak_signal_noise_ratio(a, b, data_range=255)`, so other metrics can reuse them.
"""
from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from harness.errors import UsageError
from harness.engine.schema import option
from harness.engine.metric import Metric, VideoBatch

DATA_RANGE = 255.0
# skimage returns inf for identical images, which would make every mean over pairs infinite. 100 dB
# is the MSE 255**2 * 1e-10, far below any visible difference; every smaller MSE (0 included)
# scores exactly this.
PSNR_CAP_DB = 100.0
WIN_SIZE = 7  # skimage's default uniform window
K1, K2 = 0.01, 0.03
# Video pixel values (videos x frames x H x W x 3) per chunk: a few of the toy's videos, so that the
# frames' moment maps stay in the CPU's cache (fastest at 4-8 of the toy's 21-frame 32x32 videos on
# 2 threads, benchmarks/bench_dynamics.py), which matters more than batching further.
_CHUNK_ELEMENTS = 400_000
# Window positions per band-matrix product (see _window_means): 4-6x faster than whole-axis bands on
# 256-832 px frames, and the toy's 26 positions per axis stay one tile.
_TILE = 32


@functools.lru_cache(maxsize=None)
def _band(n: int) -> torch.Tensor:
    """(n, n - WIN_SIZE + 1): column j sums elements j .. j + WIN_SIZE - 1."""
    i = torch.arange(n)[:, None] - torch.arange(n - WIN_SIZE + 1)[None, :]
    return ((i >= 0) & (i < WIN_SIZE)).float()


def _tiling(n: int) -> tuple[int, int]:
    """(tile, padded length) for an axis of n pixels: its n - WIN_SIZE + 1 window positions in tiles of
    at most _TILE, and the length the axis is zero-padded to so that the tiles cover it exactly."""
    positions = n - WIN_SIZE + 1
    tile = min(positions, _TILE)
    return tile, -(-positions // tile) * tile + WIN_SIZE - 1


def _window_means(t: torch.Tensor, tile_h: int, tile_w: int) -> torch.Tensor:
    """Means over every WIN_SIZE x WIN_SIZE window of the maps in t, laid out (H, ..., W) with H and W
    padded as _tiling says -> (H', ..., W') tile-aligned; positions past the unpadded image are junk.

    Per axis, a matrix product with a banded 0/1 matrix: BLAS runs it far faster than 49 reads per
    pixel. Over the whole axis its cost per pixel grows with the axis, so the axis is cut into tiles of
    tile + WIN_SIZE - 1 overlapping pixels, one small band for all of them. With H first, the row tiles
    are a strided view and one batched product, without copies; W, last, is cut with unfold.
    """
    hp, wp = t.shape[0], t.shape[-1]
    row_elements = t[0].numel()
    rows = _band(tile_h + WIN_SIZE - 1).to(t.device).T / WIN_SIZE**2
    row_tiles = t.reshape(hp, row_elements).as_strided(
        ((hp - WIN_SIZE + 1) // tile_h, tile_h + WIN_SIZE - 1, row_elements), (tile_h * row_elements, row_elements, 1))
    out = torch.matmul(rows, row_tiles).reshape(-1, wp)
    tiles_w = (wp - WIN_SIZE + 1) // tile_w
    if tiles_w > 1:
        out = out.unfold(1, tile_w + WIN_SIZE - 1, tile_w).reshape(-1, tile_w + WIN_SIZE - 1)
    out = out @ _band(tile_w + WIN_SIZE - 1).to(t.device)
    return out.reshape(hp - WIN_SIZE + 1, *t.shape[1:-1], wp - WIN_SIZE + 1)


def _check_frames(videos: torch.Tensor, interval: int) -> None:
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"expected (videos, frames, H, W, 3), got shape {tuple(videos.shape)}")
    if min(videos.shape[2], videos.shape[3]) < WIN_SIZE:
        raise ValueError(f"ssim needs images of at least {WIN_SIZE}x{WIN_SIZE}, got {tuple(videos.shape[2:])}")
    if not 1 <= interval < videos.shape[1]:
        raise ValueError(f"interval {interval} needs more than {interval} frames, got {videos.shape[1]}")


def frame_pair_similarity(videos: torch.Tensor, interval: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SSIM and PSNR between frames f and f + interval of each video, as skimage's
    `structural_similarity(a, b, channel_axis=-1, data_range=255)` and `peak_signal_noise_ratio`:
    (V, F, H, W, 3) in [0, 255] -> two (V, F - interval) float64.

    The window means of a frame and of its square are computed once per frame, not once per pair
    that contains it; only the cross term is per pair. skimage averages the SSIM map where the 7x7
    window lies inside the image (it crops (win_size - 1) // 2 from each border), so unpadded window
    means give exactly that region. Values are centred to [-127.5, 127.5] in float32, exact enough:
    uxx - ux**2 of values within +-127.5 loses ~1e-3 against the constant c2 = 58.5.
    """
    _check_frames(videos, interval)
    frames, pairs = videos.shape[1], videos.shape[1] - interval
    first, later = slice(0, pairs), slice(interval, frames)
    hwc = videos.permute(2, 0, 1, 4, 3)  # (H, V, F, 3, W): see _window_means
    h, w = hwc.shape[0], hwc.shape[-1]
    (tile_h, hp), (tile_w, wp) = _tiling(h), _tiling(w)
    maps = torch.empty((hp, hwc.shape[1], 2 * frames + pairs, 3, wp), device=videos.device)
    x = maps[:, :, :frames]
    x[h:], x[..., w:] = 0, 0  # the padding; squares and products of it are 0 too
    torch.sub(hwc, DATA_RANGE / 2, out=x[:h, ..., :w])
    torch.mul(x, x, out=maps[:, :, frames : 2 * frames])
    torch.mul(x[:, :, first], x[:, :, later], out=maps[:, :, 2 * frames :])
    means = _window_means(maps, tile_h, tile_w)[: h - WIN_SIZE + 1, ..., : w - WIN_SIZE + 1]
    ux, uxx, uxy = means[:, :, :frames], means[:, :, frames : 2 * frames], means[:, :, 2 * frames :]
    cov_norm = WIN_SIZE**2 / (WIN_SIZE**2 - 1)  # skimage's use_sample_covariance=True
    var = torch.addcmul(uxx, ux, ux, value=-1).mul_(cov_norm)
    mean = ux + DATA_RANGE / 2  # the means of the uncentred images
    mean_sq = mean * mean
    c1, c2 = (K1 * DATA_RANGE) ** 2, (K2 * DATA_RANGE) ** 2
    luminance = torch.mul(mean[:, :, first], mean[:, :, later]).mul_(2).add_(c1)
    contrast = torch.addcmul(uxy, ux[:, :, first], ux[:, :, later], value=-1).mul_(2 * cov_norm).add_(c2)
    denominator = torch.add(mean_sq[:, :, first], mean_sq[:, :, later]).add_(c1)
    denominator.mul_(torch.add(var[:, :, first], var[:, :, later]).add_(c2))
    ssim_map = luminance.mul_(contrast).div_(denominator)
    # channels weigh equally, as skimage's per-channel mean
    ssims = _sum_rows_then_float64(ssim_map, dims=(0, 3)) / ssim_map[:, 0, 0].numel()
    return ssims, _psnr_db(hwc[:, :, first], hwc[:, :, later], dims=(0, 3))


def _sum_rows_then_float64(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Sum over the last dim in float32, then over `dims` in float64: no float64 copy of t, and the
    rows of squared 8-bit differences sum exactly (below 2**24 for rows of up to 258 pixels)."""
    return t.sum(dim=-1).double().sum(dim=dims)


def _psnr_db(a: torch.Tensor, b: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """PSNR over `dims` and the last dim, capped at PSNR_CAP_DB. Differences of 8-bit values square
    exactly in float32."""
    sq = (a.float() - b.float()).square_()
    mse = _sum_rows_then_float64(sq, dims) / np.prod([a.shape[d] for d in (*dims, -1)])
    floor = DATA_RANGE**2 * 10 ** (-PSNR_CAP_DB / 10)
    return 10 * torch.log10(DATA_RANGE**2 / mse.clamp_min(floor))


def _check_pairs(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"need equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of each image pair, (N, H, W, 3) x2 -> (N,) float64, as skimage's defaults."""
    _check_pairs(a, b)
    return frame_pair_similarity(torch.stack([a, b], dim=1), interval=1)[0][:, 0]  # N two-frame videos


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each image pair, (N, H, W, 3) x2 -> (N,) float64, capped at PSNR_CAP_DB."""
    _check_pairs(a, b)
    return _psnr_db(a, b, dims=(1, 2))


def device_option(metric: str, device: str) -> torch.device:
    """The `device` option; the caller picks it, CPU by default so scoring never competes with a GPU job."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UsageError(f"metric.{metric}.device={device!r} is not a torch device ({err}); use cpu or cuda") from err


@dataclass(frozen=True)
class DynamicsOptions:
    interval: int = option(5, min=1)  # frames between the compared pairs
    device: str = "cpu"


class Dynamics(Metric):
    name: ClassVar[str] = "dynamics"
    version: ClassVar[str] = "1"
    higher_is_better: ClassVar[dict[str, bool]] = {"ssim": False, "psnr": False}
    description: ClassVar[str] = (
        "Mean SSIM (skimage defaults, 7x7 uniform window) and PSNR (dB, capped at 100) over frame "
        "pairs (f, f+interval), interval 5 by default as in AutoRefiner Table 7; lower = more motion."
    )

    Options: ClassVar[type] = DynamicsOptions

    def __init__(self, weights_dir: str | Path = "weights", **options: Any):
        typed = self.check_options(options)
        self.interval = typed.interval
        self.device = device_option(self.name, typed.device)
        super().__init__(weights_dir, **options)

    def score(self, batch: VideoBatch) -> dict[str, np.ndarray]:
        shape = self._per_video(batch.videos)
        ssims, psnrs = np.empty(shape), np.empty(shape)
        for videos, frames in self._blocks(batch.videos):
            block = torch.from_numpy(np.ascontiguousarray(batch.videos[videos, frames])).to(self.device)
            s, p = frame_pair_similarity(block, self.interval)
            pairs = slice(frames.start, frames.stop - self.interval)
            ssims[videos, pairs], psnrs[videos, pairs] = s.cpu().numpy(), p.cpu().numpy()
        return {"ssim": ssims.mean(axis=1), "psnr": psnrs.mean(axis=1)}

    def _blocks(self, videos: np.ndarray) -> Iterator[tuple[slice, slice]]:
        """(videos, frames) blocks of about _CHUNK_ELEMENTS pixel values, so memory stays bounded:
        whole videos while one fits, else runs of at least `interval` pairs of one video (a run of
        pairs needs `interval` frames beyond them; shorter runs would recompute most frames)."""
        count, frames = videos.shape[:2]
        frame_elements = int(np.prod(videos.shape[2:]))
        if frames * frame_elements <= _CHUNK_ELEMENTS:
            step = _CHUNK_ELEMENTS // (frames * frame_elements)
            for start in range(0, count, step):
                yield slice(start, start + step), slice(0, frames)
            return
        pairs = frames - self.interval
        run = max(self.interval, _CHUNK_ELEMENTS // frame_elements - self.interval)
        for video in range(count):
            for start in range(0, pairs, run):
                yield slice(video, video + 1), slice(start, min(start + run, pairs) + self.interval)

    def _frame_pairs(self, videos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frames f and f + interval of every video, each flattened to (B * pairs, H, W, 3), video-major."""
        b, pairs = self._per_video(videos)
        first = videos[:, : pairs].reshape(b * pairs, *videos.shape[2:])
        later = videos[:, self.interval :].reshape(b * pairs, *videos.shape[2:])
        return first, later

    def _per_video(self, videos: np.ndarray) -> tuple[int, int]:
        """(videos, pairs per video): the shape that per-pair values reshape to."""
        if videos.shape[1] < self.interval + 1:
            raise UsageError(
                f"{self.name}: interval {self.interval} needs videos of at least {self.interval + 1} "
                f"frames, got {videos.shape[1]}; lower the interval option"
            )
        return len(videos), videos.shape[1] - self.interval

    def _chunks(self, a: np.ndarray, b: np.ndarray, elements: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The pairs as tensors on the device, about `elements` pixel values at a time, so memory stays bounded."""
        per_pair = int(np.prod(a.shape[1:]))
        step = max(1, elements // per_pair)
        for start in range(0, len(a), step):
            yield (torch.tensor(a[start : start + step], device=self.device),
                   torch.tensor(b[start : start + step], device=self.device))
