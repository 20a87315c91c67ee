"""world_bench: a VBench-shaped suite for the shapes world, read by the oracle and by classical image
processing (no learned weights).

Every video gets one score in [0, 1] per dimension (higher is better), each defined in one line in
`DIMENSIONS`, plus `quality`, `semantic` and `total` aggregated as VBench aggregates
(scripts/cal_final_score.py): a dimension is normalised with its Min/Max,
(value - Min) / (Max - Min) * weight, without clipping; Quality and Semantic are the sums of their
normalised dimensions over the sum of their weights (VBench: 6.5 and 9 over its 16 dimensions;
here 5.5 and 5 over these 11); Total = (4 * Quality + 1 * Semantic) / 5.
Min/Max/weights are VBench's (NORMALIZE_DIC, DIM_WEIGHT) for the dimensions named after VBench's,
so normalised values sit on VBench's scale (e.g. motion smoothness above 0.9975 normalises above 1,
as in VBench); the world's own dimensions (motion direction, physics) use Min 0, Max 1, weight 1.

Every dimension is read from one oracle reading per video (harness/world/oracle.py: per-object
tracks, colours, shapes, count, motion) and from the pixels; the world's physics (render.py:
constant speed, wall bounces, gravity GRAVITY) defines what smooth, dynamic and physical mean.
VBench's aesthetic quality, scene, appearance/temporal style, overall consistency and human action
have no counterpart in a world of flat shapes on a plain background, and the grammar has no spatial
relations, so there is no spatial-relationship dimension (inventing one would test nothing the
prompts ask for).

Prompt subsets: VBench scores each dimension only on the prompts written for it. Here a dimension
that the prompt does not test is NaN for that video: multiple_objects on one-object prompts,
physics on prompts other than bouncing/falling, dynamic_degree on "standing still" prompts (a
correct still video must not be punished for not moving). The report averages the non-NaN values
(harness/report/tables.py summarize), so a dimension's mean is its mean over its own prompt subset, as in
VBench. Per video, a group score is the weighted mean of the group's applicable dimensions.

Per-video totals and VBench's total: normalisation is affine and the group scores are fixed-weight
sums, so when every dimension applies to every video, the mean over videos of the per-video
quality / semantic / total equals `aggregate` of the per-dimension means, i.e. exactly VBench's
total of averaged dimensions. Where a dimension applies only to a subset, the per-video means weigh
that dimension by the share of videos it applies to (and re-weigh within each video), so they differ
from VBench's number; `aggregate(per-dimension means)` gives VBench's exactly. With a fixed prompt
suite the re-weighting is the same for every method, so comparisons stay fair.

The suite is versioned: changing any dimension's definition, constant, Min/Max or weight bumps
`WorldBench.version` (the store rescores on a new version).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import uniform_filter1d

from harness.errors import UsageError
from harness.world.grammar import Scene, parse
from harness.world.oracle import Reading, judge, read_video
from harness.world.render import GRAVITY
from harness.engine.metric import Metric, VideoBatch
from metrics.temporal_flicker import flicker_score
from metrics.world_alignment import check_world_prompts, filled, merged_frames, subject_sightings

PATCH_RADIUS = 6  # px: a 13x13 patch holds the largest object (radius 4.6, a triangle's apex 1.17 r up)
MASK_RADIUS = 7.0  # px from a centroid within which a pixel may belong to the object (or its blur)
CRETE_BOX = 9  # Crete et al.'s re-blur box length
NOISE_PSNR_DB = (20.0, 40.0)  # noise PSNR that maps to 0 and to 1
FALL_T0 = np.arange(0.0, 3.01, 0.25)  # frames a fall may rest first (the renderer rests 0-2)
FALL_RMS = 1.0  # px: a fall obeys gravity when the rest-then-GRAVITY model fits this well
# A rendered bounce turns within 7.5 px of the wall: radius <= 4.6, 0.5 px wall gap, one step of
# <= 1.7 px per axis, and a triangle's centroid r/6 off its centre.
TURN_MARGIN = 8.0
TURN_PROMINENCE = 1.5  # px the path must go back on both sides of a turn (centroid jitter is < 0.5)
TURN_WINDOW = 4  # frames on each side in which a turn is looked for
STEADY = 0.3  # bouncing speed over 2-frame spans stays within this share of its median


@dataclass(frozen=True)
class Dimension:
    group: str  # "quality" or "semantic"
    definition: str  # one line
    low: float  # normalisation Min
    high: float  # normalisation Max
    weight: float


DIMENSIONS: dict[str, Dimension] = {
    "subject_consistency": Dimension(
        "quality", f"each tracked object's background-subtracted {2 * PATCH_RADIUS + 1}-px square patch "
        "(bilinear, centred on its centroid) against the previous and the first frame (VBench's "
        "pairing), similarity max(0, 2<a,b>/(|a|^2+|b|^2)); mean over frames and objects; 0 if none",
        0.1462, 1.0, 1.0),
    "background_consistency": Dimension(
        "quality", f"1 - mean |difference| (RGB in [0, 1]) over pixels farther than {MASK_RADIUS:g} px "
        "from every object in both frames, against the previous and the first frame; mean over frames",
        0.2615, 1.0, 1.0),
    "temporal_flickering": Dimension(
        "quality", "VBench's formula (255 - mean |frame[t+1] - frame[t]|) / 255 on the 8-bit video "
        "(metrics/temporal_flicker.py), without VBench's static-clip filter",
        0.6293, 1.0, 1.0),
    "motion_smoothness": Dimension(
        "quality", "(S - mean |p[t] - (p[t-1] + p[t+1]) / 2|) / S over every tracked centroid p with "
        "both neighbours seen, S the frame's larger side: VBench's interpolate-the-middle-frame "
        "error on recovered trajectories; 0 if no object is tracked",
        0.706, 0.9975, 1.0),
    "dynamic_degree": Dimension(
        "quality", "1 if, over frames 0, 2, 4, ... (n of them), at least max(1, round(4 n / 16)) "
        "steps move some object's centroid over 6 * min(H, W) / 256 px (VBench's RAFT rule, on "
        "tracks), else 0; NaN on 'standing still' prompts",
        0.0, 1.0, 0.5),
    "imaging_quality": Dimension(
        "quality", f"sharpness x noise: Crete et al.'s (2007) re-blur sharpness ({CRETE_BOX}-px box) over "
        "an ideal step edge's, times the PSNR of Immerkaer's (1996) noise estimate mapped "
        f"{NOISE_PSNR_DB[0]:g} dB -> 0, {NOISE_PSNR_DB[1]:g} dB -> 1, clipped",
        0.0, 1.0, 1.0),
    "object_class": Dimension(
        "semantic", "the oracle reads exactly the prompted shapes (as a multiset; judge 'shape')",
        0.0, 1.0, 1.0),
    "multiple_objects": Dimension(
        "semantic", "two-object prompts: both prompted (colour, shape) objects are read and the "
        "object count is 2 (judge 'object' and 'count'); NaN on one-object prompts",
        0.0, 1.0, 1.0),
    "colour": Dimension(
        "semantic", "the oracle reads exactly the prompted colours (as a multiset; judge 'colour')",
        0.0, 1.0, 1.0),
    "motion_direction": Dimension(
        "semantic", "the oracle reads the prompted motion: left / right / up / down, bouncing, "
        "falling or standing still (judge 'motion')",
        0.0, 1.0, 1.0),
    "physics": Dimension(
        "semantic", "share of tracked objects that obey the world's law: bouncing = at least one "
        f"turn, every turn within {TURN_MARGIN:g} px of a wall, steady speed; falling = rest, then "
        f"GRAVITY straight down (RMS fit error <= {FALL_RMS:g} px); NaN on other prompts",
        0.0, 1.0, 1.0),
}
GROUP_WEIGHTS: dict[str, float] = {"quality": 4.0, "semantic": 1.0}  # VBench's QUALITY:SEMANTIC
GROUPS: tuple[str, ...] = ("quality", "semantic", "total")


def normalise(name: str, values: np.ndarray | float) -> np.ndarray:
    """VBench's (value - Min) / (Max - Min) * weight, not clipped."""
    d = DIMENSIONS[name]
    return (np.asarray(values, dtype=np.float64) - d.low) / (d.high - d.low) * d.weight


def aggregate(values: dict[str, np.ndarray | float]) -> dict[str, np.ndarray]:
    """quality / semantic / total from dimension values (arrays over videos, or scalars).

    Each group is the sum of its normalised dimensions over the sum of their weights, skipping NaN
    (not applicable) entries; on per-dimension means this is exactly VBench's cal_final_score."""
    out = {}
    for group in GROUP_WEIGHTS:
        names = [n for n, d in DIMENSIONS.items() if d.group == group]
        norm = np.stack([normalise(n, values[n]) for n in names])
        weights = np.array([DIMENSIONS[n].weight for n in names]).reshape(-1, *[1] * (norm.ndim - 1))
        applies = ~np.isnan(norm)
        out[group] = np.where(applies, norm, 0.0).sum(0) / np.where(applies, weights, 0.0).sum(0)
    out["total"] = sum(GROUP_WEIGHTS[g] * out[g] for g in GROUP_WEIGHTS) / sum(GROUP_WEIGHTS.values())
    return out


# -- quality dimensions ---------------------------------------------------------------------------

def subject_positions(reading: Reading) -> list[np.ndarray]:
    """Each tracked object's centroids (F, 2) from its sightings, NaN where it is not seen. A merged
    detection's centroid is neither object's, so it counts as unseen."""
    paths = []
    for seen in subject_sightings(reading):
        merged = merged_frames(seen)
        xy = np.full((len(reading.frames), 2), np.nan)
        for f, d in seen.items():
            if f not in merged:
                xy[f] = (d.x, d.y)
        paths.append(xy)
    return paths


def _patches(offsets: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Bilinear (2R+1)^2 patches of offsets (F, H, W, 3) centred on centres (F, 2) (pixel-centre
    coordinates, as the oracle's); outside the frame is background (zero offset)."""
    f, h, w, _ = offsets.shape
    pad = PATCH_RADIUS + 2
    padded = np.pad(offsets, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    grid = np.arange(-PATCH_RADIUS, PATCH_RADIUS + 1)
    limit = np.array([w, h]) + 2 * pad - 2
    pos = np.clip(centres[:, None, :] - 0.5 + pad + grid[None, :, None], 0, limit)  # (F, P, 2)
    lo = np.floor(pos).astype(np.intp)
    frac = (pos - lo).astype(np.float32)
    x0, y0 = lo[:, None, :, 0], lo[:, :, None, 1]
    fx, fy = frac[:, None, :, 0, None], frac[:, :, None, 1, None]
    fi = np.arange(f)[:, None, None]
    top = padded[fi, y0, x0] * (1 - fx) + padded[fi, y0, x0 + 1] * fx
    bottom = padded[fi, y0 + 1, x0] * (1 - fx) + padded[fi, y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """max(0, 2<a,b> / (|a|^2 + |b|^2)) over the last axis: the cosine when norms agree, lower when
    an object fades or grows; 0 when both are empty (no subject to compare)."""
    num = 2.0 * (a * b).sum(-1)
    den = (a * a).sum(-1) + (b * b).sum(-1)
    return np.where(den > 0, np.maximum(num, 0.0) / np.maximum(den, 1e-12), 0.0)


def subject_consistency(offsets: np.ndarray, centres: list[np.ndarray]) -> float:
    if not centres:
        return 0.0
    scores = []
    for c in centres:
        p = _patches(offsets, c).reshape(len(c), -1)
        # VBench's pairing: each frame against the previous and the first, averaged over frames
        scores.append(float((_similarity(p[1:], p[:-1]) + _similarity(p[1:], p[:1])).mean() / 2))
    return float(np.mean(scores))


def background_consistency(video: np.ndarray, centres: list[np.ndarray]) -> float:
    f, h, w, _ = video.shape
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    background = np.ones((f, h, w), dtype=bool)
    for c in centres:
        background &= (xx - c[:, 0, None, None]) ** 2 + (yy - c[:, 1, None, None]) ** 2 > MASK_RADIUS**2

    def similarity(t: np.ndarray, u: np.ndarray) -> np.ndarray:
        common = background[t] & background[u]
        diff = np.abs(video[t] - video[u]).mean(-1)
        return 1.0 - (diff * common).sum((1, 2)) / np.maximum(common.sum((1, 2)), 1)

    later = np.arange(1, f)
    return float((similarity(later, later - 1) + similarity(later, 0 * later)).mean() / 2)


def motion_smoothness(tracks: list[np.ndarray], size: int) -> float:
    errors = [np.hypot(*(xy[1:-1] - (xy[:-2] + xy[2:]) / 2).T) for xy in tracks]
    seen = np.concatenate([e[~np.isnan(e)] for e in errors]) if errors else np.zeros(0)
    if seen.size == 0:
        return 0.0
    return max(0.0, (size - float(seen.mean())) / size)


def dynamic_degree(tracks: list[np.ndarray], height: int, width: int) -> float:
    """VBench: a video is dynamic if enough frame steps (after subsampling) have a large flow; the
    flow's top 5% (an object's worth of pixels at 32x32) is here the largest centroid step."""
    if not tracks:
        return 0.0
    sub = np.stack(tracks)[:, ::2]  # (objects, n, 2)
    steps = np.hypot(*np.moveaxis(np.diff(sub, axis=1), -1, 0))  # (objects, n - 1), NaN if unseen
    largest = np.where(np.isnan(steps), -np.inf, steps).max(0)
    need = max(1, round(4 * sub.shape[1] / 16))
    return float((largest > 6.0 * min(height, width) / 256).sum() >= need)


def _crete_sharpness(grey: np.ndarray) -> float:
    """1 - Crete et al.'s blur: the share of neighbour differences that a 9-px box re-blur removes,
    the worse of the two axes, per frame; over the ideal step edge's share (1 - 1/9), so a pixel-sharp
    edge scores 1. A frame without any variation scores 0."""
    blurs = []
    for axis in (1, 2):
        sharp = np.abs(np.diff(grey, axis=axis))
        reblurred = np.abs(np.diff(uniform_filter1d(grey, CRETE_BOX, axis=axis, mode="nearest"), axis=axis))
        total = sharp.sum((1, 2))
        kept = total - np.maximum(sharp - reblurred, 0.0).sum((1, 2))
        blurs.append(np.where(total > 0, kept / np.maximum(total, 1e-12), 1.0))
    sharpness = (1.0 - np.maximum(*blurs)) / (1.0 - 1.0 / CRETE_BOX)
    return float(np.clip(sharpness, 0.0, 1.0).mean())


def _noise_sigma(video8: np.ndarray) -> float:
    """Immerkaer's (1996) noise estimate in 8-bit units, with a median over every channel (robust to
    edges): the 3x3 kernel [1 -2 1; -2 4 -2; 1 -2 1] cancels flat areas and ramps; its L2 norm is 6."""
    v = video8.astype(np.float32)
    rows = v[:, :-2] - 2 * v[:, 1:-1] + v[:, 2:]
    lap = rows[:, :, :-2] - 2 * rows[:, :, 1:-1] + rows[:, :, 2:]
    return float(np.median(np.abs(lap)) / (0.6745 * 6.0))


def imaging_quality(video8: np.ndarray, grey: np.ndarray) -> float:
    sigma = _noise_sigma(video8)
    psnr = np.inf if sigma == 0 else 20.0 * np.log10(255.0 / sigma)
    low, high = NOISE_PSNR_DB
    return _crete_sharpness(grey) * float(np.clip((psnr - low) / (high - low), 0.0, 1.0))


# -- physics ----------------------------------------------------------------------------------------

def _falls(track: np.ndarray) -> bool:
    """Rest, then y = y0 + GRAVITY/2 (t - t0)^2 from rest (t0 in FALL_T0), x fixed, fits within
    FALL_RMS px RMS, over the frames before the object reaches its lowest point (the floor)."""
    t = np.flatnonzero(~np.isnan(track[:, 0]))
    x, y = track[t, 0], track[t, 1]
    before = y < y.max() - 1.0
    if before.sum() < 5:
        return False
    t, x, y = t[before], x[before], y[before]
    drop = 0.5 * GRAVITY * np.clip(t[None, :] - FALL_T0[:, None], 0.0, None) ** 2  # (t0s, frames)
    misfit = (y[None, :] - drop).var(axis=1).min()  # y0 fitted per t0 by the mean
    return float(np.sqrt(misfit + x.var())) <= FALL_RMS


def _turns(s: np.ndarray) -> np.ndarray:
    """Indices of the turning maxima of s: the path goes back at least TURN_PROMINENCE on both sides
    within TURN_WINDOW frames (the first frame of a plateau counts)."""
    w = TURN_WINDOW
    windows = sliding_window_view(np.pad(s, w, constant_values=np.nan), 2 * w + 1)  # row i centred on s[i]
    before = np.fmin.reduce(windows[:, :w], axis=1)  # fmin/fmax skip the NaN padding
    after = np.fmin.reduce(windows[:, w + 1:], axis=1)
    with np.errstate(invalid="ignore"):  # NaN at the ends compares False: an end is never a turn
        peak = (s >= np.fmax.reduce(windows, axis=1)) & (s > windows[:, w - 1])
        return np.flatnonzero(peak & (np.minimum(s - before, s - after) >= TURN_PROMINENCE))


def _bounces(track: np.ndarray, height: int, width: int) -> bool:
    """At least one turn, every turn at a wall, and a steady speed over the 2-frame spans that no
    reflection cuts short."""
    t = np.flatnonzero(~np.isnan(track[:, 0]))
    if len(t) < 6:
        return False
    p = filled(track)[t[0]:t[-1] + 1]
    turns, at_wall = [], True
    for k, size in enumerate((width, height)):
        for sign, wall in ((1.0, size), (-1.0, 0.0)):
            found = _turns(sign * p[:, k])
            turns += list(found)
            at_wall &= bool(np.all(np.abs(p[found, k] - wall) <= TURN_MARGIN))
    span = np.hypot(*(p[2:] - p[:-2]).T)  # span i runs from frame i to i + 2
    cut = np.zeros(len(span), dtype=bool)
    for j in turns:  # the reflection lies in the step before or after the turning frame j
        cut[max(j - 2, 0):j + 1] = True
    free = span[~cut]
    typical = float(np.median(free)) if free.size else 0.0
    steady = typical > 0 and bool(np.all(np.abs(free - typical) <= STEADY * typical))
    return bool(turns) and at_wall and steady


def physics(positions: list[np.ndarray], motion: str, height: int, width: int) -> float:
    if motion not in ("bouncing", "falling"):
        return float("nan")
    if not positions:
        return 0.0
    obeys = [_falls(xy) if motion == "falling" else _bounces(xy, height, width) for xy in positions]
    return float(np.mean(obeys))


# -- one video ------------------------------------------------------------------------------------

def score_video(video8: np.ndarray, scene: Scene) -> dict[str, float]:
    """Every dimension of one uint8 (F, H, W, 3) video against its parsed prompt."""
    f, h, w, _ = video8.shape
    reading = read_video(video8)
    video = video8.astype(np.float32) / 255.0
    offsets = video - np.median(video.reshape(f, h * w, 3), axis=1)[:, None, None, :]
    positions = subject_positions(reading)
    centres = [filled(xy) for xy in positions]
    verdict = judge(scene, reading)
    two = len(scene.objects) == 2
    return {
        "subject_consistency": subject_consistency(offsets, centres),
        "background_consistency": background_consistency(video, centres),
        "temporal_flickering": flicker_score(video8),
        "motion_smoothness": motion_smoothness(positions, max(h, w)),
        "dynamic_degree": float("nan") if scene.motion == "still" else dynamic_degree(positions, h, w),
        "imaging_quality": imaging_quality(video8, video.mean(-1)),
        "object_class": verdict["shape"],
        "multiple_objects": verdict["object"] * verdict["count"] if two else float("nan"),
        "colour": verdict["colour"],
        "motion_direction": verdict["motion"],
        "physics": physics(positions, scene.motion, h, w),
    }


class WorldBench(Metric):
    name: ClassVar[str] = "world_bench"
    version: ClassVar[str] = "1"  # bump on any change to a dimension, constant, Min/Max or weight
    higher_is_better: ClassVar[dict[str, bool]] = {k: True for k in (*DIMENSIONS, *GROUPS)}
    description: ClassVar[str] = (
        "VBench-shaped suite on the shapes world (oracle + classical image processing): 6 quality and "
        "5 semantic dimensions in [0, 1], NaN where the prompt does not test one; quality / semantic / "
        "total as VBench aggregates (Min/Max normalisation, Quality:Semantic = 4:1)"
    )
    needs: ClassVar[tuple[str, ...]] = ("prompt",)

    @classmethod
    def check_prompts(cls, prompts: list[str]) -> None:
        check_world_prompts(cls.name, prompts)

    def score(self, batch: VideoBatch) -> dict[str, np.ndarray]:
        videos = batch.videos
        if videos.ndim != 5 or videos.shape[-1] != 3 or videos.dtype != np.uint8:
            raise UsageError(f"world_bench scores uint8 videos (B, F, H, W, 3); got {videos.dtype} {videos.shape}")
        if videos.shape[1] < 3:
            raise UsageError(f"world_bench needs videos of at least 3 frames, got {videos.shape[1]}")
        rows = []
        for video, record in zip(videos, batch.records):
            if "prompt" not in record:
                raise UsageError("world_bench needs each video's prompt; the record has no 'prompt' field")
            rows.append(score_video(video, parse(record["prompt"])))
        values = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in DIMENSIONS}
        return {**values, **aggregate(values)}
