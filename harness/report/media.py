"""Stored videos as pictures to watch: animated GIFs (the HTML report's samples, `refinery export`)
and whole-multiple nearest-neighbour enlargement, which keeps every stored pixel a sharp square."""
from __future__ import annotations

import io

import numpy as np

GIF_COLOURS = 256  # a GIF frame indexes one palette of at most 256 colours


def enlarged(video: np.ndarray, factor: int) -> np.ndarray:
    """(F, H, W, 3) -> (F, H * factor, W * factor, 3), each pixel a factor x factor square."""
    if factor == 1:
        return video
    return video.repeat(factor, axis=1).repeat(factor, axis=2)


def gif_bytes(video: np.ndarray, frame_ms: int, factor: int = 1) -> bytes:
    """A looping GIF of a uint8 (F, H, W, 3) video, enlarged `factor` times. One palette for every
    frame (no colour flicker between frames): the video's own colours where it has at most 256, so
    every frame reads back exactly; otherwise 256 colours chosen by median cut over all frames,
    without dithering. Pillow merges consecutive identical frames into one of their summed duration."""
    from PIL import Image

    indices, palette = _palette(video)
    frames = []
    for frame in enlarged(indices[..., None], factor)[..., 0]:
        image = Image.fromarray(frame, mode="P")
        image.putpalette(palette)
        frames.append(image)
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=frame_ms, loop=0,
                   disposal=2, optimize=False)
    return buf.getvalue()


def _palette(video: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Each pixel's palette index (uint8, (F, H, W)) and the palette (flat RGB triples)."""
    from PIL import Image

    pixels = video.reshape(-1, 3)
    colours, inverse = np.unique(pixels, axis=0, return_inverse=True)
    if len(colours) <= GIF_COLOURS:
        return inverse.reshape(video.shape[:3]).astype(np.uint8), colours.astype(int).ravel().tolist()
    mosaic = Image.fromarray(np.ascontiguousarray(video.reshape(-1, video.shape[2], 3)))
    quantized = mosaic.quantize(colors=GIF_COLOURS, dither=Image.Dither.NONE)
    palette = quantized.getpalette()[:3 * GIF_COLOURS]
    return np.asarray(quantized).reshape(video.shape[:3]), palette
