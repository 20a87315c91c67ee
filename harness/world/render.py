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
    travel = speed * (frames - 1)
    start = rng.uniform(r + 1, size - r - 1 - travel)
    along = start + speed * np.arange(frames)
    if direction in ("left", "up"):
        along = size - along
    if direction in ("left", "right"):
        return np.stack([along, np.full(frames, lane)], axis=1)
    return np.stack([np.full(frames, lane), along], axis=1)


def _bouncing(rng: np.random.Generator, frames: int, size: int, r: float) -> np.ndarray:
    lo, hi = r + 0.5, size - r - 0.5
    pos = rng.uniform(lo, hi, size=2)
    angle = rng.uniform(0, 2 * np.pi)
    vel = 2.2 * np.array([np.cos(angle), np.sin(angle)])
    vel[np.abs(vel) < 0.8] = 0.8 * np.sign(vel[np.abs(vel) < 0.8] + 1e-9)  # no near-axis paths
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
    y0 = rng.uniform(r + 0.5, r + 3)
    t = np.arange(frames) - rng.integers(0, 3)  # rests a frame or two before it drops
    y = y0 + 0.5 * GRAVITY * np.clip(t, 0, None) ** 2
    return np.stack([np.full(frames, lane), np.minimum(y, size - r - 0.5)], axis=1)


def tracks(scene: Scene, seed: int, frames: int, size: int) -> list[Track]:
    """Sample the objects' trajectories; two objects of a linear motion get separate lanes."""
    rng = np.random.default_rng(seed)
    n = len(scene.objects)
    radii = rng.uniform(3.6, 4.6, size=n)
    lanes = (np.array([0.3, 0.72]) if n == 2 else np.array([rng.uniform(0.3, 0.7)])) * size
    lanes = lanes[rng.permutation(n)] + rng.uniform(-1.5, 1.5, size=n)
    out = []
    for i in range(n):
        r = float(radii[i])
        if scene.motion in ("left", "right", "up", "down"):
            c = _linear(rng, frames, size, r, lanes[i], scene.motion)
        elif scene.motion == "bouncing":
            c = _bouncing(rng, frames, size, r)
        elif scene.motion == "falling":
            c = _falling(rng, frames, size, r, lanes[i])
        else:
            c = np.repeat([[lanes[i], rng.uniform(r + 2, size - r - 2)]], frames, axis=0)
            if n == 2:
                c[:, [0, 1]] = c[:, [1, 0]]
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
