"""Bytes per stored video by format and resolution, with the fidelity and the time of each format.

    .venv/bin/python benchmarks/bench_video_format.py [--sizes 832x480x81,416x240x81,32x32x21]

There are no real model weights here, so the content is the most realistic this machine can make
(each a uint8 (F, H, W, 3) video; every random draw seeded):

- shapes: the shapes world (harness/world/render.py) rendered at full size: its 32-pixel geometry
  scaled up, anti-aliased, flat colours on a flat background (the easiest content);
- toy: a video of the toy model (model=toy, its first world_eval prompt) upscaled bilinearly in space
  and linearly in time to the size (smooth, like a blurred natural video);
- texture: a natural-image-like moving texture: luminance with a 1/f^1.3 amplitude spectrum (natural
  images are about 1/f), chroma from smoother fields (1/f^2), two layers (a background panning 2
  px/frame, an elliptical foreground sliding the other way with its own texture), a slow cross-fade
  to a second field (non-rigid change), and film grain of 1 level (sd) per pixel: the hardest case.

Formats: npy (today's store), ffv1 (lossless, Matroska), png (PNG frames in Matroska, lossless),
h264-crf{12,17,23} (libx264 yuv420p mp4, lossy; PSNR against the input), and compressed latents for
the Wan VAE (16 channels, 4x in time and 8x in space) as bf16 and zstd/zlib of them (size only: the
latents of these videos do not exist without the VAE).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.store.video_format import NPY, decode, ffmpeg, video_format  # noqa: E402

FORMATS = ["npy", "ffv1", "png", "h264-crf12", "h264-crf17", "h264-crf23"]


def _field(rng: np.random.Generator, h: int, w: int, exponent: float) -> np.ndarray:
    """A zero-mean, unit-sd field with a 1/f^exponent amplitude spectrum."""
    f = np.fft.rfft2(rng.standard_normal((h, w)))
    radius = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :])
    field = np.fft.irfft2(f / np.maximum(radius, 1.0 / max(h, w)) ** exponent, s=(h, w))
    return (field - field.mean()) / field.std()


def _colour_field(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    luma = 0.16 * _field(rng, h, w, 1.3)
    a, b = (0.07 * _field(rng, h, w, 2.0) for _ in range(2))
    rgb = np.stack([luma + 1.4 * b, luma - 0.34 * a - 0.71 * b, luma + 1.77 * a], axis=-1)
    return rgb + rng.uniform(0.35, 0.6, 3)


def texture(frames: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pan = 2 * frames + 8
    back, second = _colour_field(rng, h + pan, w + pan), _colour_field(rng, h + pan, w + pan)
    front = _colour_field(rng, h, w + pan)
    yy, xx = np.mgrid[:h, :w]
    out = np.empty((frames, h, w, 3), np.float32)
    for t in range(frames):
        mix = t / max(frames - 1, 1)
        frame = (1 - mix) * back[t: t + h, 2 * t: 2 * t + w] + mix * second[pan - t - 1: pan - t - 1 + h, t: t + w]
        cx, cy = w * (0.7 - 0.4 * mix), h * (0.5 + 0.1 * np.sin(6 * mix))
        inside = ((xx - cx) / (0.18 * w)) ** 2 + ((yy - cy) / (0.25 * h)) ** 2 <= 1
        frame[inside] = front[:, pan - 2 * t - 1: pan - 2 * t - 1 + w][inside] + 0.1
        out[t] = frame
    out += rng.normal(0, 1 / 255, out.shape).astype(np.float32)
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def shapes(frames: int, h: int, w: int) -> np.ndarray:
    from harness.world.grammar import parse
    from harness.world.render import BACKGROUND, Track, render_tracks, tracks

    scene = parse("a red circle and a blue square moving right")  # two objects, linear motion
    scale = h / 32
    base = tracks(scene, 0, frames, 32)
    out = np.empty((frames, h, w, 3), np.uint8)
    out[:] = (BACKGROUND * 255).round().astype(np.uint8)
    left = (w - h) // 2
    for t in range(frames):  # one frame at a time: the 4x supersampled canvas of a whole video is GBs
        one = [Track(tr.centres[t: t + 1] * scale, tr.radius * scale) for tr in base]
        out[t, :, left: left + h] = (render_tracks(scene, one, h)[0] * 255).round().astype(np.uint8)
    return out


def toy(frames: int, h: int, w: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    from harness.api import compose
    from harness.experiment.pipeline import load_model, to_uint8
    from harness.engine.rollout import rollout
    from harness.engine.registry import METHODS
    from harness.experiment.pipeline import sampler_from
    from harness.experiment.suites import read_suite

    cfg = compose(["model=toy", "suite=world_eval"])
    prompt = read_suite(cfg.suite).prompts[0]
    result = rollout(load_model(cfg), METHODS.get("base")(), [prompt], [0], sampler_from(cfg))
    video = result.videos[0].float()  # (F, 3, H, W) in [0, 1]
    video = F.interpolate(video, size=(h, w), mode="bilinear", align_corners=False)  # space
    video = F.interpolate(video.permute(1, 2, 3, 0).reshape(1, -1, video.shape[0]), size=frames,
                          mode="linear", align_corners=True).reshape(3, h, w, frames).permute(3, 0, 1, 2)
    return to_uint8(video[None].clamp(0, 1))[0]


def _png_in_mkv(path: Path, video: np.ndarray) -> None:
    writer = ffmpeg().write_frames(str(path), (video.shape[2], video.shape[1]), fps=16, codec="png", quality=None,
                                    pix_fmt_in="rgb24", pix_fmt_out="rgb24", macro_block_size=1,
                                    ffmpeg_log_level="error", output_params=["-f", "matroska"])
    writer.send(None)
    for frame in video:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def measure(video: np.ndarray, name: str, folder: Path) -> tuple[int, float, float, float]:
    """bytes, encode seconds, decode seconds, PSNR (inf: lossless)."""
    if name == "png":
        path = folder / "v.png.mkv"
        start = time.perf_counter()
        _png_in_mkv(path, video)
        encode = time.perf_counter() - start
        start = time.perf_counter()
        back = decode(path)
    else:
        fmt = video_format(name, 16) if name != "npy" else NPY
        path = folder / f"v{fmt.suffix}"
        start = time.perf_counter()
        fmt.write(path, video)
        encode = time.perf_counter() - start
        start = time.perf_counter()
        back = fmt.read(path)
    decode_s = time.perf_counter() - start
    mse = float(((back.astype(np.float64) - video) ** 2).mean())
    psnr = float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)
    return path.stat().st_size, encode, decode_s, psnr


def latent_bytes(video: np.ndarray, seed: int = 0) -> tuple[int, int]:
    """Raw bf16 bytes of the Wan VAE's latents of a video this size, and zlib -9 of latent-like values
    (Gaussian, as the VAE's latents roughly are; their low mantissa bits are noise to a compressor)."""
    import torch

    f, h, w, _ = video.shape
    shape = (16, 1 + (f - 1) // 4, h // 8, w // 8)
    latents = torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))
    data = latents.to(torch.bfloat16).view(torch.int16).numpy().tobytes()
    return len(data), len(zlib.compress(data, 9))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="832x480x81,416x240x81,32x32x21", help="WxHxF,...")
    parser.add_argument("--contents", default="texture,toy,shapes")
    args = parser.parse_args()
    makers = {"texture": texture, "toy": toy, "shapes": shapes}
    print("| content | W x H x F | format | MB per video | vs npy | PSNR dB | encode s | decode s |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        w, h, f = map(int, size.split("x"))
        for content in args.contents.split(","):
            video = makers[content](f, h, w)
            with tempfile.TemporaryDirectory() as tmp:
                results = {name: measure(video, name, Path(tmp)) for name in FORMATS}
            raw = results["npy"][0]
            for name, (size_b, enc, dec, psnr) in results.items():
                quality = "lossless" if psnr == float("inf") else f"{psnr:.1f}"
                print(f"| {content} | {w}x{h}x{f} | {name} | {size_b / 1e6:.3f} | {size_b / raw:.4f} | {quality} "
                      f"| {enc:.2f} | {dec:.2f} |", flush=True)
        raw, packed = latent_bytes(video)
        print(f"| (any) | {w}x{h}x{f} | latents bf16 / zlib | {raw / 1e6:.3f} / {packed / 1e6:.3f} | "
              f"{raw / results['npy'][0]:.4f} | needs the VAE to score | | |", flush=True)


if __name__ == "__main__":
    main()
