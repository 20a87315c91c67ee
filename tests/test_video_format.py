"""The stored video formats (harness/store/video_format.py) and how a finished cell is recognised:
by size and modification time, opening no video, with the full hash kept for `refinery verify`."""
from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.errors import UsageError
from harness.store import video_format as vf
from harness.store.cells import Store
from tests.conftest import FAST

ROOT = Path(__file__).resolve().parent.parent
CHEAP = [*FAST, "~metric.world_bench", "~metric.world_alignment", "report.metrics=[temporal_flicker,dynamics]",
         "report.headline=[dynamics.ssim]"]


def _moving_video(frames: int = 9, h: int = 32, w: int = 48) -> np.ndarray:
    """A smooth gradient with a bright square moving right: content with motion and colour."""
    yy, xx = np.mgrid[:h, :w]
    video = np.empty((frames, h, w, 3), np.uint8)
    for t in range(frames):
        video[t, ..., 0] = (xx * 255 // w).astype(np.uint8)
        video[t, ..., 1] = (yy * 255 // h).astype(np.uint8)
        video[t, ..., 2] = 60
        video[t, 8:16, 2 * t: 2 * t + 8] = 230
    return video


def test_ffv1_reads_back_the_frames_written(tmp_path):
    video = _moving_video()
    fmt = vf.video_format("ffv1", 16)
    fmt.write(tmp_path / "v.mkv", video)
    assert fmt.lossless and np.array_equal(fmt.read(tmp_path / "v.mkv"), video)


def test_h264_keeps_shape_and_is_close_and_writes_the_same_bytes_twice(tmp_path):
    video = _moving_video()
    fmt = vf.video_format("h264-crf17", 16)
    fmt.write(tmp_path / "a.mp4", video)
    fmt.write(tmp_path / "b.mp4", video)
    back = fmt.read(tmp_path / "a.mp4")
    psnr = 10 * np.log10(255 ** 2 / ((back.astype(float) - video) ** 2).mean())
    assert back.shape == video.shape and back.dtype == np.uint8 and psnr > 30
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()


def test_a_stored_video_decodes_to_the_same_frames_in_another_process(tmp_path):
    video = _moving_video()
    vf.video_format("h264-crf23", 16).write(tmp_path / "v.mp4", video)
    here = hashlib.sha256(vf.decode(tmp_path / "v.mp4").tobytes()).hexdigest()
    code = ("import hashlib, sys; from harness.store.video_format import decode; "
            "print(hashlib.sha256(decode(sys.argv[1]).tobytes()).hexdigest())")
    there = subprocess.run([sys.executable, "-c", code, str(tmp_path / "v.mp4")], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.strip()
    assert here == there


@pytest.mark.parametrize("name", ["h264", "h264-crf52", "mp4", "ffv2"])
def test_an_unknown_format_is_one_line_with_the_names(name):
    with pytest.raises(UsageError, match=f"model.video_format={name} is not a video format; use npy, ffv1"):
        vf.video_format(name)


def test_h264_refuses_an_odd_frame_size():
    with pytest.raises(UsageError, match="needs an even frame size, not 33x32; use model.video_format=ffv1"):
        vf.video_format("h264-crf17").check_size(32, 33)


def test_a_truncated_encoded_file_is_not_whole(tmp_path):
    vf.video_format("h264-crf17", 16).write(tmp_path / "v.mp4", _moving_video())
    data = (tmp_path / "v.mp4").read_bytes()
    assert vf.stored_problem(".mp4", data) is None
    assert vf.stored_problem(".mp4", data[: len(data) // 3]) == "is not a whole .mp4 file"


# -- cells in a format -----------------------------------------------------------------------------

def _run(tmp_path: Path, *extra: str) -> tuple[Store, str]:
    from harness import api

    scores = api.run([*CHEAP, f"paths.store={tmp_path}", *extra])
    return Store(tmp_path), scores["cell"].iloc[0]


def test_the_default_toy_spec_has_no_video_entry_so_its_keys_stay(tmp_path):
    from harness.api import compose
    from harness.experiment.pipeline import resolve_run

    plain = resolve_run(compose([*CHEAP, f"paths.store={tmp_path}"]))
    npy = resolve_run(compose([*CHEAP, f"paths.store={tmp_path}", "model.video_format=npy"]))
    ffv1 = resolve_run(compose([*CHEAP, f"paths.store={tmp_path}", "model.video_format=ffv1"]))
    assert "video" not in plain.spec and plain.key == npy.key
    assert ffv1.spec["video"]["format"] == "ffv1" and ffv1.key != plain.key


def test_metrics_score_the_frames_decoded_from_the_stored_file(tmp_path):
    from harness.engine.metric import VideoBatch
    from harness.engine.registry import METRICS

    store, key = _run(tmp_path, "model.video_format=h264-crf30")
    cell = store.cell(key)
    files = sorted(p.name for p in (cell.path / "videos").iterdir())
    assert files == [f"{i:05d}.mp4" for i in range(4)]
    stored = np.stack([vf.decode(cell.path / "videos" / f) for f in files])
    metric = METRICS.get("temporal_flicker")()
    metric.update(VideoBatch(stored, cell.records()))
    expected = {k: v.tolist() for k, v in metric.compute().items()}
    assert cell.read_scores()["temporal_flicker"]["values"] == expected


def _count_video_opens(monkeypatch) -> list[str]:
    """Every open of a file under videos/ from now on, by Python or by a decode through ffmpeg."""
    opened: list[str] = []
    for owner, name in ((builtins, "open"), (io, "open")):
        real = getattr(owner, name)

        def counting(file, *args, _real=real, **kwargs):
            if "/videos/" in str(file):
                opened.append(str(file))
            return _real(file, *args, **kwargs)

        monkeypatch.setattr(owner, name, counting)
    real_decode = vf.decode
    monkeypatch.setattr(vf, "decode", lambda path: opened.append(str(path)) or real_decode(path))
    return opened


@pytest.mark.parametrize("video_format", ["npy", "h264-crf17"])
def test_a_rerun_of_a_finished_cell_opens_no_video(tmp_path, monkeypatch, capsys, video_format):
    store, key = _run(tmp_path, f"model.video_format={video_format}")
    opened = _count_video_opens(monkeypatch)
    _run(tmp_path, f"model.video_format={video_format}")
    assert "0 videos generated" in capsys.readouterr().out and opened == []
    vf.VideoFormat.read(store.cell(key).video_format(), store.cell(key).video_path(0))  # the counter counts
    assert opened


def test_verify_catches_a_change_of_the_same_size_and_time(tmp_path, monkeypatch):
    from harness import api
    from harness.experiment.pipeline import _up_to_date

    store, key = _run(tmp_path)
    cell = store.cell(key)
    video = cell.video_path(2)
    stat, data = video.stat(), bytearray(video.read_bytes())
    data[-1] ^= 0xFF
    video.write_bytes(bytes(data))
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as a silent disk error, or a careful hand, leaves it
    assert _up_to_date(cell)  # size and time match: a rerun trusts it, as make and rsync would
    rows = api.verify([f"paths.store={tmp_path}"])
    assert list(rows.file) == ["videos/00002.npy"] and "differs from the manifest (sha256)" in rows.problem[0]


def test_a_manifest_without_times_is_checked_by_hash(tmp_path):
    from harness.experiment.pipeline import _up_to_date

    store, key = _run(tmp_path)
    cell = store.cell(key)
    manifest = json.loads((cell.path / "manifest.json").read_text())
    for entry in manifest["files"].values():
        del entry["mtime_ns"]  # as a store written before 2026-12-07 has it
    (cell.path / "manifest.json").write_text(json.dumps(manifest))
    assert _up_to_date(cell)
    video = cell.video_path(1)
    stat, data = video.stat(), bytearray(video.read_bytes())
    data[-1] ^= 0xFF
    video.write_bytes(bytes(data))
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert not _up_to_date(cell)


def test_verify_stamps_the_times_an_old_manifest_lacks(tmp_path, capsys):
    from harness import api

    store, key = _run(tmp_path)
    path = store.cell(key).path / "manifest.json"
    stamped = json.loads(path.read_text())
    old = {**stamped, "files": {f: {k: v for k, v in e.items() if k != "mtime_ns"} for f, e in stamped["files"].items()}}
    path.write_text(json.dumps(old))
    assert api.verify([f"paths.store={tmp_path}"]).empty
    assert "file times added to its manifest" in capsys.readouterr().out
    assert json.loads(path.read_text()) == stamped
