"""How a cell stores its videos: the format named by `model.video_format`, recorded in the cell's spec.

Formats (benchmarks/RESULTS.md, "Bytes per video", measured them at full size):

- `npy`: uint8 (F, H, W, 3) as numpy writes it; lossless, 97 MB per 832x480x81 video. The toy and
  wan_tiny keep it, so their cells keep their bits and keys: a cell stored as npy has no "video"
  entry in its spec, exactly as before formats existed.
- `ffv1`: FFV1 in Matroska, planar RGB (gbrp), lossless; the frames read back equal those written.
- `h264-crf<N>`: H.264 (libx264, yuv420p) in mp4 at constant quality N (0..51, lower is closer),
  what VBench itself scores; lossy. self_forcing and causvid default to `h264-crf17`.

Every metric reads the frames decoded from the stored file (Cell.read_video), never the frames the
model produced, so a score always describes what the store holds; and since the format changes those
frames, its settings are part of the cell's spec and so of its key. Encoding uses one thread and
bit-exact flags (x264's output depends on its thread count), decoding converts colour with swscale's
bit-exact path (no CPU-specific SIMD rounding): the same file decodes to the same frames in every
process, and the same frames encode to the same file on one ffmpeg build.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import UsageError
from harness.store.files import atomic_write, atomic_write_bytes

if TYPE_CHECKING:  # numpy is imported where frames are handled: checking a format name needs none
    import numpy as np

__all__ = ["VideoFormat", "NPY", "FORMAT_NAMES", "video_format", "format_of_spec", "format_of_suffix", "stored_problem", "decode",
           "ffmpeg"]

FORMAT_NAMES = "npy, ffv1 or h264-crf<N> (N from 0 to 51)"
_H264 = re.compile(r"h264-crf(\d{1,2})")
_BITEXACT = ["-flags", "+bitexact", "-fflags", "+bitexact"]  # no encoder version strings in the file
_SWS = "accurate_rnd+bitexact+full_chroma_int"  # swscale's C path: the same frames on every CPU
_ENCODERS = {  # codec -> (file suffix, ffmpeg muxer, encoder, its options, pixel format)
    "ffv1": (".mkv", "matroska", "ffv1", ["-level", "3", "-g", "1", "-slicecrc", "1", "-threads", "1"], "gbrp"),
    "h264": (".mp4", "mp4", "libx264", ["-preset", "medium", "-threads", "1"], "yuv420p"),
}


@dataclass(frozen=True)
class VideoFormat:
    """One stored form of a video: its name, and the settings that change the frames it reads back."""

    name: str
    codec: str  # npy | ffv1 | h264
    crf: int | None = None  # h264 only
    fps: int | None = None  # the container's frame rate (encoded formats only); frames are unaffected

    @property
    def suffix(self) -> str:
        return ".npy" if self.codec == "npy" else _ENCODERS[self.codec][0]

    @property
    def lossless(self) -> bool:
        return self.codec != "h264"

    def spec(self) -> dict[str, Any] | None:
        """The cell spec's "video" entry; None for npy, whose cells predate formats and keep their keys."""
        if self.codec == "npy":
            return None
        suffix, _, encoder, options, pix_fmt = _ENCODERS[self.codec]
        entry = {"format": self.name, "container": suffix.lstrip("."), "encoder": encoder, "options": options,
                 "pix_fmt": pix_fmt, "fps": self.fps}
        if self.crf is not None:
            entry["crf"] = self.crf
        return entry

    def check_size(self, height: int, width: int) -> None:
        """yuv420p halves the chroma planes: H.264 needs an even frame size."""
        if self.codec == "h264" and (height % 2 or width % 2):
            raise UsageError(f"model.video_format={self.name} needs an even frame size, not {width}x{height}; "
                             "use model.video_format=ffv1 (lossless) or npy")

    def write(self, path: Path, video: np.ndarray) -> None:
        """Store a uint8 (F, H, W, 3) video at path (which ends in self.suffix), atomically."""
        import numpy as np

        if self.codec == "npy":
            buf = io.BytesIO()
            np.save(buf, np.asarray(video), allow_pickle=False)
            atomic_write_bytes(path, buf.getvalue())
            return
        self.check_size(*video.shape[1:3])
        atomic_write(path, lambda tmp: self._encode(tmp, video))

    def _encode(self, path: Path, video: np.ndarray) -> None:
        import numpy as np

        _, muxer, encoder, options, pix_fmt = _ENCODERS[self.codec]
        quality = ["-crf", str(self.crf)] if self.crf is not None else []
        writer = ffmpeg().write_frames(
            str(path), (video.shape[2], video.shape[1]), fps=self.fps or 16, codec=encoder, quality=None,
            pix_fmt_in="rgb24", pix_fmt_out=pix_fmt, macro_block_size=1, ffmpeg_log_level="error",
            output_params=[*options, *quality, "-sws_flags", _SWS, *_BITEXACT, "-f", muxer])
        writer.send(None)
        for frame in video:
            writer.send(np.ascontiguousarray(frame))
        writer.close()

    def read(self, path: Path) -> np.ndarray:
        """The uint8 (F, H, W, 3) frames stored at path; a file that does not decode is a ValueError."""
        import numpy as np

        if self.codec == "npy":
            return np.load(path, allow_pickle=False)
        return decode(path)


NPY = VideoFormat("npy", "npy")


def decode(path: Path) -> np.ndarray:
    """Every frame of an encoded video as uint8 RGB, converted with swscale's bit-exact path."""
    import numpy as np

    try:
        reader = ffmpeg().read_frames(str(path), pix_fmt="rgb24", output_params=["-sws_flags", _SWS])
        meta = next(reader)
        width, height = meta["size"]
        frames = [np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader]
    except (OSError, RuntimeError, StopIteration, KeyError, ValueError) as e:
        raise ValueError(f"does not decode ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from e
    if not frames:
        raise ValueError("holds no frames")
    return np.stack(frames)


def video_format(name: str, fps: int | None = None) -> VideoFormat:
    """The format `model.video_format` names; fps: the model's frame rate, written into encoded files."""
    if name == "npy":
        return NPY
    if name == "ffv1":
        return VideoFormat("ffv1", "ffv1", fps=fps)
    match = _H264.fullmatch(str(name))
    if match and int(match.group(1)) <= 51:
        return VideoFormat(name, "h264", crf=int(match.group(1)), fps=fps)
    raise UsageError(f"model.video_format={name} is not a video format; use {FORMAT_NAMES}")


def format_of_spec(spec: dict | None) -> VideoFormat:
    """The format a cell's spec records: npy where it records none (every cell written before formats)."""
    entry = (spec or {}).get("video")
    if entry is None:
        return NPY
    if not isinstance(entry, dict) or not isinstance(entry.get("format"), str):
        raise UsageError(f"the cell spec's video entry {entry!r} is not a video format; rerun the cell")
    return video_format(entry["format"], entry.get("fps") or 16)


def format_of_suffix(suffix: str) -> VideoFormat:
    """A format that names and decodes files of this suffix (their encoder settings unknown)."""
    return {".mkv": video_format("ffv1"), ".mp4": video_format("h264-crf17")}.get(suffix, NPY)


def stored_problem(suffix: str, data: bytes) -> str | None:
    """Why the bytes of a stored video file cannot be a whole video, or None; cheap (an encoded file's
    frames are decoded only when read): files are written whole or not at all (atomic renames), so
    this catches what was put there by other means."""
    import numpy as np

    if suffix == ".npy":
        try:
            np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, EOFError, OSError) as e:
            return f"is not readable ({e})"
        return None
    whole = {".mkv": data[:4] == b"\x1a\x45\xdf\xa3", ".mp4": data[4:8] == b"ftyp" and b"moov" in data}
    return None if whole.get(suffix) else f"is not a whole {suffix} file"


def ffmpeg():
    """The imageio_ffmpeg module, which reads and writes video files through its bundled ffmpeg binary."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise UsageError("encoded videos (mp4, mkv) need the imageio-ffmpeg package: pip install imageio-ffmpeg"
                         ) from None
    return imageio_ffmpeg
