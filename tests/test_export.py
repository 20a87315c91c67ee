"""`refinery export`: the frames of an exported GIF or mp4, read back with imageio, are the stored
frames (GIF exactly where a video has at most 256 colours; mp4 within a stated PSNR), a gallery is
the report's cells x prompts in a grid, and bad input is one line that writes nothing."""
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from conftest import FAST, ROOT, fast_with
from harness.errors import UsageError
from harness.report.export import GAP, GAP_GREY, MISSING_GREY, export_videos, split_options
from harness.report.media import enlarged, gif_bytes
from harness.store.cells import Store
from synthetic import PROMPTS, write_cell

MP4_PSNR_DB = 40.0  # H.264 crf=0 in yuv420p, frames enlarged 2x (chroma blocks then cover whole pixels)


def export(store, refs, *words, fps=16, crf=17, prompts=4):
    options, rest = split_options(list(words))
    assert rest == []
    return export_videos(store, refs, options, fps, crf, prompts)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


@pytest.fixture
def cells(tmp_path):
    store = Store(tmp_path / "store")
    refs = [write_cell(store, name, prompts=PROMPTS[:3]) for name in ("base", "bon")]
    return store, refs


def stored(store, key, index):
    return store.cell(key).read_video(index)


def test_a_gif_of_a_video_with_few_colours_reads_back_exactly(cells, tmp_path):
    store, refs = cells
    out = tmp_path / "sample.gif"
    (placed,) = export(store, refs[:1], f"out={out}", "video=3", "scale=1")
    assert (placed.cell, placed.video) == ("base", 3)
    assert np.array_equal(iio.imread(out, index=None)[..., :3], stored(store, "base", 3))
    big = tmp_path / "big.gif"
    export(store, refs[:1], f"out={big}", "video=3", "scale=3")
    assert np.array_equal(iio.imread(big, index=None)[..., :3], enlarged(stored(store, "base", 3), 3))


def test_a_gif_of_many_colours_is_quantised_within_a_stated_psnr():
    """Over 256 colours (soft shapes on a noisy ground, as the toy model's videos), one median-cut
    palette: >= 33 dB (36.9 measured)."""
    y, x = np.mgrid[0:32, 0:32]
    rng = np.random.default_rng(0)
    frames = []
    for f in range(8):
        red = np.exp(-((x - 8 - 2 * f) ** 2 + (y - 16) ** 2) / 18.0)[..., None] * np.array([230, 40, 60])
        blue = np.exp(-((x - 24) ** 2 + (y - 6 - 2 * f) ** 2) / 12.0)[..., None] * np.array([40, 60, 230])
        frames.append(np.clip(20 + red + blue + rng.normal(0, 2, (32, 32, 3)), 0, 255))
    video = np.stack(frames).astype(np.uint8)
    assert len(np.unique(video.reshape(-1, 3), axis=0)) > 256
    back = iio.imread(gif_bytes(video, 62), index=None)[..., :3]
    assert back.shape == video.shape and psnr(back, video) >= 33


def test_an_mp4_reads_back_within_its_psnr_at_the_requested_fps(cells, tmp_path):
    store, refs = cells
    out = tmp_path / "sample.mp4"
    export(store, refs[:1], f"out={out}", "video=5", "scale=2", "crf=0", fps=12)
    frames = iio.imread(out, plugin="FFMPEG", index=None)
    video = stored(store, "base", 5)
    assert frames.shape == (len(video), 16, 16, 3)
    assert psnr(frames[:, ::2, ::2], video) >= MP4_PSNR_DB
    assert iio.immeta(out, plugin="FFMPEG")["fps"] == 12


def test_a_sample_by_prompt_and_seed_and_a_whole_cell(cells, tmp_path):
    store, refs = cells
    one = tmp_path / "one.gif"
    (placed,) = export(store, refs[1:], f"out={one}", f"prompt={PROMPTS[2]}", "seed=1", "scale=1")
    assert (placed.prompt, placed.seed, placed.video) == (PROMPTS[2], 1, 5)  # prompt-major: 2 * 2 seeds + 1
    assert np.array_equal(iio.imread(one, index=None)[..., :3], stored(store, "bon", 5))
    first = tmp_path / "first.gif"
    (placed,) = export(store, refs[1:], f"out={first}", f"prompt={PROMPTS[1]}", "scale=1")
    assert (placed.seed, placed.video) == (0, 2)  # the cell's first seed
    whole = tmp_path / "cell.gif"
    placed = export(store, refs[1:], f"out={whole}", "scale=1")
    videos = [stored(store, "bon", i) for i in range(6)]
    assert [p.start for p in placed] == [6 * i for i in range(6)]
    assert np.array_equal(iio.imread(whole, index=None)[..., :3], np.concatenate(videos))


def test_the_gallery_is_the_report_cells_by_prompts(tmp_path):
    """Rows: cells, in the report's order; columns: prompts spread over the suite, first seed; a cell
    without the prompt is a grey tile; tiles `GAP` white pixels apart."""
    store = Store(tmp_path / "store")
    refs = [write_cell(store, "base", prompts=PROMPTS[:5]), write_cell(store, "bon", prompts=PROMPTS[:3]),
            write_cell(store, "cfg", prompts=PROMPTS[:5], state="running")]  # not complete: left out
    out = tmp_path / "gallery.gif"
    placed = export(store, refs, f"out={out}", "gallery=true", "scale=2", prompts=3)
    frames = iio.imread(out, index=None)[..., :3]
    tile = 8 * 2
    assert frames.shape == (6, 2 * tile + GAP, 3 * tile + 2 * GAP, 3)  # 2 complete cells x 3 prompts
    chosen = [PROMPTS[0], PROMPTS[2], PROMPTS[4]]  # 3 of 5, first to last
    assert [(p.row, p.column, p.cell, p.prompt, p.seed) for p in placed] == [
        (0, 0, "base", chosen[0], 0), (0, 1, "base", chosen[1], 0), (0, 2, "base", chosen[2], 0),
        (1, 0, "bon", chosen[0], 0), (1, 1, "bon", chosen[1], 0)]
    for p in placed:
        y, x = p.row * (tile + GAP), p.column * (tile + GAP)
        assert np.array_equal(frames[:, y:y + tile, x:x + tile], enlarged(stored(store, p.cell, p.video), 2))
    assert (frames[:, tile + GAP:, 2 * (tile + GAP):] == MISSING_GREY).all()  # bon has no prompt 4
    assert (frames[:, tile:tile + GAP] == GAP_GREY).all() and (frames[:, :, tile:tile + GAP] == GAP_GREY).all()


BAD = {
    "unknown suffix": (["out={tmp}/x.avi"], "'avi'; known: gif, mp4"),
    "no out": (["video=1"], "export needs out="),
    "out is a folder": (["out={tmp}"], "is a folder"),
    "out under a file": (["out={tmp}/store/cells/base/spec.json/x.gif"], "cannot be written"),
    "no such video": (["out={tmp}/x.gif", "video=99"], "has no video 99; its videos are 0 to 5"),
    "no such prompt": (["out={tmp}/x.gif", "prompt=a dragon"], "has no video of prompt='a dragon'"),
    "no such seed": (["out={tmp}/x.gif", f"prompt={PROMPTS[0]}", "seed=7"], "its seeds are 0, 1"),
    "seed without prompt": (["out={tmp}/x.gif", "seed=1"], "seed= picks the sample of prompt=P"),
    "video and prompt": (["out={tmp}/x.gif", "video=1", "prompt=p"], "not both"),
    "bad fps": (["out={tmp}/x.gif", "fps=0"], "fps=0 is not an integer >= 1"),
    "bad crf": (["out={tmp}/x.mp4", "crf=60"], "crf=60 is not an integer from 0 to 51"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_one_line_and_writes_nothing(name, cells, tmp_path):
    store, refs = cells
    words, expected = BAD[name]
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(UsageError, match=expected) as raised:
        export(store, refs[:1], *(w.format(tmp=tmp_path) for w in words))
    assert "\n" not in str(raised.value)
    assert sorted(tmp_path.rglob("*")) == before  # no file, no temp file, no folder


def test_a_cell_not_in_the_store_and_several_cells_are_refused(cells, tmp_path):
    store, refs = cells
    from harness.store.cells import CellRef

    with pytest.raises(UsageError, match="is not in the store"):
        export(store, [CellRef("sop", {"method": "sop"})], f"out={tmp_path / 'x.gif'}")
    with pytest.raises(UsageError, match="select 2 cells.*gallery=true"):
        export(store, refs, f"out={tmp_path / 'x.gif'}")
    assert not (tmp_path / "x.gif").exists()


def test_the_command_refuses_bad_options_in_one_line_without_torch(tmp_path):
    code = ("import sys; from harness.cli import main; "
            f"rc = main(['export', 'method=base', 'out={tmp_path}/x.webm']); print(rc, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.stdout.split() == ["2", "False"]
    assert done.stderr.count("\n") == 1 and "export format" in done.stderr


@pytest.mark.slow
def test_export_of_a_run_cell_through_the_api(tmp_path):
    """`refinery.export` selects the cell as `run` composed it, by the same overrides."""
    import refinery

    cell = [*FAST, "~metric.world_bench", "~metric.world_alignment", f"paths.store={tmp_path / 'runs'}"]
    scores = refinery.run(cell)
    key = scores.cell.iloc[0]
    prompt = scores.prompt.iloc[-1]
    out = tmp_path / "sample.gif"
    placed = refinery.export([*cell, f"out={out}", f"prompt={prompt}", "seed=0"])
    video = Store(tmp_path / "runs").cell(key).read_video(int(placed.video.iloc[0]))
    assert placed.cell.tolist() == [key] and placed.attrs["files"] == {"sample.gif": str(out.resolve())}
    back = iio.imread(out, index=None)[..., :3]
    factor = back.shape[2] // video.shape[2]
    assert factor == 4 and back.shape[0] == len(video)  # toy frames of 32 px enlarged to 128
    assert psnr(back[:, ::factor, ::factor], video) >= 30  # the toy's videos have more than 256 colours
    with pytest.raises(UsageError, match="is not in the store"):
        refinery.export([*fast_with(["sampler.steps=3"], cell), f"out={tmp_path / 'none.gif'}"])
