"""Procedural videos of the shapes world: coloured shapes with simple physics on a plain background.

A video is a float32 array (F, H, W, 3) in [0, 1]. Everything random comes from `seed`, so a
(scene, seed) pair always renders the same video. Edges are anti-aliased by 4x supersampling, which
gives the autoencoder smooth targets and the oracle realistic, not binary, inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.world.grammar import COLOURS, Scene

BACKGROUND = np.array([0.08, 0.08, 0.10], dtype=np.float32)
SUPERSAMPLE = 4
GRAVITY = 0.12  # px / frame^2
JITTER = 1.0  # px: how far a start position varies around the prompt's


@dataclass(frozen=True)
class Track:
    """One object's trajectory: centres (F, 2) as (x, y) in pixels, and its radius in pixels."""

    centres: np.ndarray
    radius: float


def _coverage(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        half = 0.85 * r
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    # triangle, apex up: inside the base line and both slanted sides
    top, bottom, half_base = -r, 0.75 * r, 1.05 * r
    slope = half_base / (bottom - top)
    return (dy <= bottom) & (np.abs(dx) <= (dy - top) * slope)


def _linear(rng: np.random.Generator, frames: int, size: int, r: float, lane: float, direction: str):
    speed = rng.uniform(0.7, 0.95)
    along = r + 1.5 + rng.uniform(-JITTER, JITTER) + speed * np.arange(frames)
    if direction in ("left", "up"):
        along = size - along
    if direction in ("left", "right"):
        return np.stack([along, np.full(frames, lane)], axis=1)
    return np.stack([np.full(frames, lane), along], axis=1)


def _bouncing(rng: np.random.Generator, frames: int, size: int, r: float, lane: float, first: bool) -> np.ndarray:
    lo, hi = r + 0.5, size - r - 0.5
    pos = np.array([lane, size / 2 + rng.uniform(-JITTER, JITTER)])
    diagonal = np.array([1.0, -1.0]) if first else np.array([-1.0, 1.0])  # up-right; down-left
    vel = rng.uniform(2.05, 2.35) / np.sqrt(2) * diagonal
    out = np.empty((frames, 2))
    for f in range(frames):
        out[f] = pos
        pos = pos + vel
        for k in range(2):  # reflect off the walls
            if pos[k] < lo:
                pos[k], vel[k] = 2 * lo - pos[k], -vel[k]
            elif pos[k] > hi:
                pos[k], vel[k] = 2 * hi - pos[k], -vel[k]
    return out


def _falling(rng: np.random.Generator, frames: int, size: int, r: float, lane: float) -> np.ndarray:
    y0 = r + 0.5 + rng.uniform(0, 2 * JITTER)
    t = np.arange(frames) - rng.integers(0, 3)  # rests a frame or two before it drops
    y = y0 + 0.5 * GRAVITY * np.clip(t, 0, None) ** 2
    return np.stack([np.full(frames, lane), np.minimum(y, size - r - 0.5)], axis=1)


def tracks(scene: Scene, seed: int, frames: int, size: int) -> list[Track]:
    """Sample the objects' trajectories. Where a video starts is set by its prompt, up to a jitter of
    a pixel (two objects take separate lanes); size, speed and timing vary more. A near-fixed start
    keeps the first chunk's posterior sharp, as the few-step sampler needs (docs/shapes-world.md, the toy models)."""
    rng = np.random.default_rng(seed)
    n = len(scene.objects)
    radii = rng.uniform(3.6, 4.6, size=n)
    lanes = (np.array([0.3, 0.72]) if n == 2 else np.array([0.5])) * size + rng.uniform(-JITTER, JITTER, size=n)
    out = []
    for i in range(n):
        r = float(radii[i])
        if scene.motion in ("left", "right", "up", "down"):
            c = _linear(rng, frames, size, r, lanes[i], scene.motion)
        elif scene.motion == "bouncing":
            c = _bouncing(rng, frames, size, r, lanes[i], first=i == 0)
        elif scene.motion == "falling":
            c = _falling(rng, frames, size, r, lanes[i])
        else:
            c = np.repeat([[lanes[i], size / 2 + rng.uniform(-JITTER, JITTER)]], frames, axis=0)
        out.append(Track(c.astype(np.float32), r))
    return out


def render_tracks(scene: Scene, object_tracks: list[Track], size: int) -> np.ndarray:
    frames = len(object_tracks[0].centres)
    s = SUPERSAMPLE
    grid = (np.arange(size * s, dtype=np.float32) + 0.5) / s
    video = np.broadcast_to(BACKGROUND, (frames, size * s, size * s, 3)).copy()
    for obj, track in zip(scene.objects, object_tracks):
        colour = np.array(COLOURS[obj.colour], dtype=np.float32)
        for f in range(frames):
            cx, cy = track.centres[f]
            mask = _coverage(obj.shape, grid[None, :] - cx, grid[:, None] - cy, track.radius)
            video[f][mask] = colour
    return video.reshape(frames, size, s, size, s, 3).mean(axis=(2, 4))


def render(scene: Scene, seed: int, frames: int = 21, size: int = 32) -> np.ndarray:
    """Render one video (F, H, W, 3) float32 in [0, 1]."""
    return render_tracks(scene, tracks(scene, seed, frames, size), size)
