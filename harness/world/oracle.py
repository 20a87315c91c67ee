"""The shapes world's oracle: reads objects, colours, shapes, count and motion back from pixels.

The scores of a sampling method must come from what its videos show, not from what it was asked
for, so the oracle sees only pixels. It is classical image processing (no learned model that could
share the generator's blind spots): foreground = pixels far from the background, connected
components per frame, palette colour by unmixing each pixel from the background, shape from
blur-tolerant soft region measures, objects as tracks across frames, motion from the trajectories.

Generated videos are blurrier than rendered ones, with colour shifts, faint blobs, fading or merging
objects, so every measure is soft (coverage-weighted) and every per-video answer is a vote over
frames rather than one frame's reading.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import find_objects
from scipy.optimize import linear_sum_assignment
from skimage.measure import label

from harness.errors import UsageError
from harness.world.grammar import COLOURS, Scene

_NAMES = tuple(COLOURS)
_PALETTE = np.array([COLOURS[c] for c in _NAMES], dtype=np.float32)

FOREGROUND = 0.3  # palette coverage that makes a pixel foreground
MIN_PIXELS = 6  # a component smaller than this is noise: the smallest object covers ~24 pixels
MIN_AREA = 8.0  # soft area (coverage-weighted pixels) below which a component is noise
MIN_PEAK = 0.4  # a component whose best pixel has less coverage than this is a faint smudge
FLOOR = 0.1  # coverage below this is treated as background, so pixel noise does not add area
SPLIT_SHARE = 0.8  # a component whose main colour has less than this share is split by colour...
SPLIT_CONTRAST = 0.25  # ...if its pieces differ this much in RGB (the closest palette pair: 0.47)
GATE = 8.0  # px: the farthest a track's predicted position may be from its next detection
MIN_TRACK = 0.25  # a track seen in fewer than this fraction of frames is noise


@dataclass(frozen=True)
class Detection:
    """One object in one frame."""

    x: float  # centroid, pixels
    y: float
    area: float  # coverage-weighted pixels
    colour: str  # nearest palette colour name
    shape: str  # circle / square / triangle


@dataclass(frozen=True)
class Reading:
    """The oracle's reading of one video."""

    frames: tuple[tuple[Detection, ...], ...]  # detections per frame
    count: int  # the object count: the mode over frames
    colours: tuple[str, ...]  # the objects' colours, sorted (the order of `objects`)
    shapes: tuple[str, ...]  # the objects' shapes, paired with `colours`
    objects: tuple[tuple[str, str], ...]  # (colour, shape) per tracked object, sorted
    motion: str  # a grammar motion name, or "none" when no object was found
    tracks: tuple[np.ndarray, ...]  # per object, (F, 2) centroid (x, y) with NaN where not seen


def _as_video(video: np.ndarray) -> np.ndarray:
    v = np.asarray(video)
    if v.ndim != 4 or v.shape[-1] != 3 or 0 in v.shape:
        raise UsageError(f"the oracle reads a video of shape (frames, height, width, 3); got {v.shape}")
    if v.dtype == np.uint8:
        return v.astype(np.float32) / 255.0
    v = v.astype(np.float32, copy=False)
    if not np.isfinite(v).all():
        raise UsageError("the video has NaN or infinite pixels; the oracle reads finite values in [0, 1]")
    return np.clip(v, 0.0, 1.0)


def _unmix(d: np.ndarray, bg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(palette index, coverage) that best explain offsets d (..., 3) from the background bg
    (broadcastable to d).

    Anti-aliased, blurred and faded pixels are mixtures of an object colour with the background, so
    each palette colour gets its best coverage and the one that leaves the least residual wins.
    Coverage, not RGB distance, decides foreground, so green (nearest the background) and yellow
    (farthest) fade out of view at the same point.
    """
    e = _PALETTE - bg[..., None, :]  # (..., K, 3), one row per background (frame)
    ee = (e * e).sum(-1)
    de = d @ _PALETTE.T - (d * bg).sum(-1, keepdims=True)  # d . e without the (..., K, 3) product
    a = np.clip(de / ee, 0.0, 1.0)  # (..., K)
    res = a * a * ee - 2 * a * de  # |d - a e|^2 less |d|^2, which is the same for every colour
    k = res.argmin(-1)
    return k, np.take_along_axis(a, k[..., None], -1)[..., 0]


def _shape_features(alpha: np.ndarray) -> tuple[float, float, float]:
    """(fill, skew, cross) of a coverage map; each survives blur well enough to vote with.

    fill = area over the soft bounding box (square ~1, circle ~0.79, triangle ~0.6);
    skew = vertical skewness of the mass (an apex-up triangle is bottom-heavy, ~-0.55; others ~0);
    cross = the joint fourth cumulant of x and y over area^2 (x1000): zero for an axis-aligned
    square, whose x and y are independent, ~-2.1 for a disc; Gaussian blur leaves it unchanged,
    since cumulants of independent blur add and a Gaussian's are zero.
    """
    area = float(alpha.sum())
    fill = area / max(float(alpha.max(0).sum() * alpha.max(1).sum()), 1e-6)
    p = alpha / area
    px, py = p.sum(0), p.sum(1)
    xs = np.arange(alpha.shape[1], dtype=np.float32)
    ys = np.arange(alpha.shape[0], dtype=np.float32)
    x, y = xs - (px * xs).sum(), ys - (py * ys).sum()
    vx, vy = (px * x * x).sum(), (py * y * y).sum()
    x2, y2 = x * x, y * y
    cxy = y @ p @ x
    cross = y2 @ p @ x2 - vx * vy - 2 * cxy * cxy
    skew = (py * y2 * y).sum() / max(vy, 1e-6) ** 1.5
    return fill, float(skew), 1000.0 * float(cross) / (area * area)


def _shape_of(alpha: np.ndarray) -> str:
    """Thresholds fitted on rendered shapes, clean and blurred (sigma 0.7-1 px) with pixel noise."""
    fill, skew, cross = _shape_features(alpha)
    if skew < -0.18:
        return "triangle"
    return "square" if (fill - 0.84) / 0.04 + (cross + 1.2) / 0.5 > 0 else "circle"


def _detect(video: np.ndarray) -> list[list[Detection]]:
    """Per-frame detections. The background is each frame's median colour rather than the
    renderer's constant, since a generator may tint or flicker it; objects cover a few percent."""
    f, h, w, _ = video.shape
    bg = np.median(video.reshape(f, h * w, 3), axis=1)[:, None, None, :]
    d = video - bg
    cls, cover = _unmix(d, bg)
    fg = cover > FOREGROUND
    # one labelling pass for the whole video: frames stacked with an empty row between them
    stacked = np.zeros((f, h + 1, w), dtype=bool)
    stacked[:, :h] = fg
    labels = label(stacked.reshape(f * (h + 1), w), connectivity=1).reshape(f, h + 1, w)[:, :h]
    n = int(labels.max())
    out: list[list[Detection]] = [[] for _ in range(f)]
    if n == 0:
        return out
    cls = np.where(fg, cls + 1, 0)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    hist = np.bincount((labels * 8 + cls).ravel(), weights=cover.ravel(), minlength=(n + 1) * 8)
    hist = hist.reshape(n + 1, 8)[:, 1:6]
    # parts: (frame, boolean mask over the frame) per candidate object
    parts: list[tuple[int, np.ndarray]] = []
    for i, sl in enumerate(find_objects(labels), start=1):
        if sl is None or sizes[i] < MIN_PIXELS:
            continue
        fr = sl[0].start
        comp = labels[fr] == i
        share = hist[i].max() / max(hist[i].sum(), 1e-9)
        if share >= SPLIT_SHARE:
            parts.append((fr, comp))
            continue
        # two palette colours in one blob: objects that touch, or one object whose colour lies
        # between two palette colours (pixel noise then scatters it over both); split by pixel
        # colour only when the pieces' cores really differ in colour
        pieces, cores = [], []
        for k in np.flatnonzero(hist[i] > 0):
            sub = label(comp & (cls[fr] == k + 1), connectivity=1)
            for j in range(1, int(sub.max()) + 1):
                m = sub == j
                if m.sum() >= MIN_PIXELS:
                    c = cover[fr][m]
                    pieces.append(m)
                    cores.append(d[fr][m][c >= 0.75 * c.max()].mean(0))
        gaps = [np.linalg.norm(p - q) for i2, p in enumerate(cores) for q in cores[i2 + 1:]]
        split = len(pieces) > 1 and max(gaps) >= SPLIT_CONTRAST
        parts += [(fr, m) for m in pieces] if split else [(fr, comp)]
    taken = np.zeros((f, h, w), dtype=bool)
    for fr, m in parts:
        taken[fr] |= m
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    found: list[tuple[int, float, float, float, str]] = []
    colours: list[np.ndarray] = []
    for fr, m in parts:
        dm = cover[fr][m]
        peak = dm.max()
        if peak < MIN_PEAK:
            continue
        core = dm >= 0.75 * peak  # the most covered pixels carry the colour, edges are mixtures
        colour = d[fr][m][core].mean(0)
        u = colour / float((colour * colour).sum())
        rows, cols = np.nonzero(m)
        y0, y1 = max(rows.min() - 1, 0), min(rows.max() + 2, h)
        x0, x1 = max(cols.min() - 1, 0), min(cols.max() + 2, w)
        alpha = np.clip(d[fr, y0:y1, x0:x1] @ u, 0.0, 1.0)
        alpha[(alpha < FLOOR) | (taken[fr, y0:y1, x0:x1] & ~m[y0:y1, x0:x1])] = 0.0
        area = float(alpha.sum())
        if area < MIN_AREA:
            continue
        x = float((alpha * xx[y0:y1, x0:x1]).sum() / area) + 0.5
        y = float((alpha * yy[y0:y1, x0:x1]).sum() / area) + 0.5
        found.append((fr, x, y, area, _shape_of(alpha)))
        colours.append(colour)
    if found:
        where = [fr for fr, *_ in found]
        names, _ = _unmix(np.array(colours), bg[where, 0, 0])
        for (fr, x, y, area, shape), k in zip(found, names):
            out[fr].append(Detection(x, y, area, _NAMES[int(k)], shape))
    return out


@dataclass
class _Track:
    seen: dict[int, Detection]

    def last(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(frame, position, velocity) at the last sighting; velocity from the two last sightings."""
        frames = sorted(self.seen)
        f = frames[-1]
        p = np.array([self.seen[f].x, self.seen[f].y])
        if len(frames) < 2:
            return f, p, np.zeros(2)
        g = frames[-2]
        v = (p - np.array([self.seen[g].x, self.seen[g].y])) / (f - g)
        speed = float(np.hypot(*v))
        return f, p, v * min(1.0, 3.0 / speed) if speed > 0 else v


def _link(frames: list[list[Detection]]) -> list[_Track]:
    """Greedy-optimal frame-to-frame assignment (Hungarian) on predicted position; a colour
    mismatch costs a few pixels rather than forbidding the match, since generated objects drift in
    colour, while two objects that meet still keep their own colours."""
    tracks: list[_Track] = []
    for f, dets in enumerate(frames):
        if not dets:
            continue
        matched: set[int] = set()
        if tracks:
            cost = np.full((len(tracks), len(dets)), np.inf)
            for i, t in enumerate(tracks):
                lf, p, v = t.last()
                gap = f - lf
                pred = p + v * min(gap, 3)
                gate = min(GATE + 2.5 * (gap - 1), 2 * GATE)
                for j, d in enumerate(dets):
                    dist = float(np.hypot(d.x - pred[0], d.y - pred[1]))
                    if dist <= gate:
                        colour = t.seen[lf].colour
                        cost[i, j] = dist + (0.0 if d.colour == colour else 4.0) + 0.1 * (gap - 1)
            finite = np.where(np.isfinite(cost), cost, 1e9)
            for i, j in zip(*linear_sum_assignment(finite)):
                if np.isfinite(cost[i, j]):
                    tracks[i].seen[f] = dets[j]
                    matched.add(j)
        tracks += [_Track({f: d}) for j, d in enumerate(dets) if j not in matched]
    return tracks


def _vote(values: list[str], weights: list[float]) -> str:
    tally: Counter[str] = Counter()
    for v, w in zip(values, weights):
        tally[v] += w
    return max(tally, key=lambda k: (tally[k], k))


def _excursion(s: np.ndarray) -> float:
    """The largest out-and-back along one axis: how far the path goes past both where it was before
    and where it is after. A wall bounce makes one of several pixels; a steady drift makes none."""
    before = np.minimum.accumulate(s)
    after = np.minimum.accumulate(s[::-1])[::-1]
    return float(np.minimum(s - before, s - after).max())


def _motion_of(xy: np.ndarray) -> str:
    """Motion from one trajectory. Order matters: still (nothing moves) before bouncing (fast and
    diagonal, or turning back at a wall) before falling (straight down, speeding up) before the
    direction of a steady drift. Velocities are taken over 3-frame spans and turns on a smoothed
    path, so centroid jitter and a frame where two objects merge do not read as bounces."""
    t = np.flatnonzero(~np.isnan(xy[:, 0]))
    if len(t) < 2:
        return "still"
    span = np.arange(t[0], t[-1] + 1)
    p = np.stack([np.interp(span, t, xy[t, k]) for k in range(2)], axis=1)  # gaps filled linearly
    k = min(3, len(p) - 1)
    w = (p[k:] - p[:-k]) / k
    speed = float(np.median(np.hypot(w[:, 0], w[:, 1])))
    ax, ay = np.median(np.abs(w), axis=0)
    e = min(3, len(p))
    net = p[-e:].mean(0) - p[:e].mean(0)
    smooth = p
    if len(p) >= 5:
        smooth = np.stack([np.convolve(p[:, k], np.ones(5) / 5, "valid") for k in range(2)], axis=1)
    if float(np.hypot(*net)) < 3.0 and float(np.ptp(smooth, axis=0).max()) < 3.0:
        return "still"
    turn = max(_excursion(sign * smooth[:, k]) for k in range(2) for sign in (1.0, -1.0))
    if turn >= 3.0 or (speed > 1.5 and min(ax, ay) > 0.5):
        return "bouncing"
    dx, dy = float(net[0]), float(net[1])
    if dy > 4.0 and abs(dx) < 0.5 * dy and len(t) >= 4:
        curve = np.polyfit(t.astype(np.float64), xy[t, 1], 2)[0]  # y = c t^2 + ...; gravity: c = 0.06
        if curve > 0.025:
            return "falling"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"  # image y grows downward


def read_video(video: np.ndarray) -> Reading:
    """Read one video (F, H, W, 3), float in [0, 1] or uint8, into per-frame detections and the
    per-video answers the judge compares with the prompt: every per-video answer is a vote over
    frames, so a few bad frames (merges, blur, a fading object) do not flip it."""
    v = _as_video(video)
    frames = _detect(v)
    n_frames = len(frames)
    counts = Counter(len(d) for d in frames)
    count = max(counts, key=lambda c: (counts[c], c)) if counts else 0
    need = max(2, int(np.ceil(MIN_TRACK * n_frames)))
    kept = sorted((t for t in _link(frames) if len(t.seen) >= need), key=lambda t: -len(t.seen))
    kept = kept[:count]
    objects, paths = [], []
    for t in kept:
        dets = list(t.seen.values())
        colour = _vote([d.colour for d in dets], [d.area for d in dets])
        typical = float(np.median([d.area for d in dets]))
        whole = [d for d in dets if d.area <= 1.4 * typical] or dets  # a merged blob's shape is neither
        shape = _vote([d.shape for d in whole], [1.0] * len(whole))
        xy = np.full((n_frames, 2), np.nan)
        for f, d in t.seen.items():
            xy[f] = (d.x, d.y)
        objects.append((colour, shape))
        paths.append(xy)
    order = sorted(range(len(objects)), key=lambda i: objects[i])
    objects = [objects[i] for i in order]
    paths = [paths[i] for i in order]
    motion = (
        _vote([_motion_of(xy) for xy in paths], [float((~np.isnan(xy[:, 0])).sum()) for xy in paths])
        if paths else "none"
    )
    return Reading(
        frames=tuple(tuple(d) for d in frames),
        count=count,
        colours=tuple(c for c, _ in objects),
        shapes=tuple(s for _, s in objects),
        objects=tuple(objects),
        motion=motion,
        tracks=tuple(paths),
    )


def judge(scene: Scene, reading: Reading) -> dict[str, float]:
    """Score a reading against its prompt, one 0/1 per VBench-style dimension. Colours and shapes
    compare as multisets, so a right colour on the wrong object still counts for colour; "object"
    asks for the right pairs, which is what composition means."""
    want = [(o.colour, o.shape) for o in scene.objects]
    have = Counter(reading.objects)
    return {
        "colour": float(sorted(c for c, _ in want) == sorted(reading.colours)),
        "shape": float(sorted(s for _, s in want) == sorted(reading.shapes)),
        "count": float(reading.count == len(want)),
        "motion": float(reading.motion == scene.motion),
        "object": float(not (Counter(want) - have)),
    }
