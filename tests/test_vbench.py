"""`refinery vbench`: leaderboard aggregation against hand-computed and published values, the
preflight's listing of missing weights, the export's names and prompt mapping, evaluate through a
stand-in for the `vbench` package (not installed here), ingest into the store, and bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import FAST
from conftest import refinery_here as refinery
from harness.cli import main
from harness.errors import UsageError
from harness.store.cells import CellRef
from harness.report.tables import collect
from harness.store.cells import Store, cell_key
from harness.vbench.evaluate import REQUIRED, Settings, check_videos, missing_weights, preflight, probe_video
from harness.vbench.export import export_cell, read_export, write_mp4
from harness.vbench.ingest import ingest
from harness.vbench.scores import (BOUNDS, CUSTOM_DIMENSIONS, DIMENSIONS, QUALITY, SEMANTIC, aggregate,
                                   read_results)


def results_file(path, scores, videos=None):
    """A VBench *_eval_results.json: {dimension: [score, [per-video dicts]]}."""
    videos = videos or {}
    path.write_text(json.dumps({d: [s, [{"video_path": f"/elsewhere/{n}", "video_results": v}
                                        for n, v in videos.get(d, {}).items()]]
                                for d, s in scores.items()}))
    return path


def at(dim, fraction):
    """The raw score that normalises to `fraction` of the dimension's range."""
    low, high = BOUNDS[dim]
    return low + fraction * (high - low)


def one_line_exit_2(capsys, *args):
    """main(args) refuses with one line on stderr; returns that line."""
    assert main(list(args)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refinery: error:"), lines
    return lines[0]


# -- aggregation ----------------------------------------------------------------------------------

def test_aggregate_matches_hand_computed_values():
    # Quality: 5 dimensions at their Max (1 each), subject consistency at mid-range (0.5) and dynamic
    # degree 0.4 at weight 0.5 (0.2): (5 + 0.5 + 0.2) / 6.5 = 57/65.
    # Semantic: all 9 at mid-range: 4.5 / 9 = 1/2. Total = (4 * 57/65 + 1/2) / 5 = 521/650.
    scores = {d: at(d, 1.0) for d in QUALITY} | {d: at(d, 0.5) for d in SEMANTIC}
    scores |= {"subject_consistency": 0.5731, "dynamic_degree": 0.4}
    summary = aggregate(scores, "hand")
    assert summary.quality == pytest.approx(57 / 65, abs=1e-12)
    assert summary.semantic == pytest.approx(0.5, abs=1e-12)
    assert summary.total == pytest.approx(521 / 650, abs=1e-12)
    assert summary.normalized["dynamic_degree"] == pytest.approx(0.2)
    # every dimension at its Min scores 0, at its Max 1
    assert aggregate({d: at(d, 0.0) for d in DIMENSIONS}, "min").total == pytest.approx(0.0, abs=1e-12)
    assert aggregate({d: at(d, 1.0) for d in DIMENSIONS}, "max").total == pytest.approx(1.0, abs=1e-12)


# AutoRefiner paper, Appendix C, Table 5: 16 dimensions (percent, 2 decimals), Total, Quality, Semantic.
TABLE5_ORDER = ("subject_consistency", "background_consistency", "aesthetic_quality", "imaging_quality",
                "temporal_flickering", "motion_smoothness", "dynamic_degree", "object_class",
                "multiple_objects", "color", "spatial_relationship", "scene", "temporal_style",
                "overall_consistency", "human_action", "appearance_style")
TABLE5 = {
    "Self-Forcing": ((95.02, 96.39, 65.78, 69.24, 99.11, 98.42, 69.44, 94.22, 88.41, 86.81, 81.24, 52.83,
                      24.58, 26.80, 97, 20.52), (84.05, 84.93, 80.54)),
    "+LoRA": ((93.17, 92.96, 63.90, 66.64, 95.43, 96.42, 95.83, 90.90, 83.08, 88.11, 78.92, 56.32, 24.93,
               27.08, 96, 20.27), (82.10, 82.65, 79.93)),
    "+InitNoiseRefiner": ((94.41, 95.79, 65.19, 68.78, 99.01, 98.26, 72.22, 92.17, 86.51, 85.72, 82.71,
                           53.78, 24.49, 27.05, 97, 20.45), (83.76, 84.63, 80.29)),
    "+AutoRefiner": ((95.42, 96.17, 65.84, 69.33, 99.09, 98.24, 76.39, 93.83, 88.64, 88.99, 86.56, 57.20,
                      24.59, 26.71, 98, 20.31), (84.72, 85.41, 81.95)),
    "CausVid": ((96.24, 95.83, 64.71, 68.33, 99.41, 98.07, 63.89, 94.22, 88.03, 86.46, 74.04, 48.47, 23.93,
                 25.77, 96, 20.25), (83.06, 84.24, 78.35)),
    "CausVid+LoRA": ((94.97, 95.14, 62.50, 71.65, 97.48, 97.27, 88.89, 89.95, 82.62, 86.00, 73.32, 58.79,
                      24.31, 25.93, 91, 20.36), (83.43, 84.74, 78.18)),
    "CausVid+InitNoiseRefiner": ((96.50, 96.74, 65.18, 67.68, 99.53, 98.31, 44.44, 93.83, 87.27, 88.16,
                                  76.44, 46.95, 23.72, 25.68, 97, 20.65), (82.23, 83.13, 78.64)),
    "CausVid+AutoRefiner": ((95.55, 95.86, 65.13, 69.10, 99.25, 98.36, 69.44, 95.25, 86.43, 89.78, 79.30,
                             53.05, 23.91, 26.21, 97, 19.84), (83.84, 84.82, 79.93)),
}


@pytest.mark.parametrize("row", sorted(TABLE5))
def test_aggregate_reproduces_published_totals(row):
    dims, (total, quality, semantic) = TABLE5[row]
    summary = aggregate({d: v / 100 for d, v in zip(TABLE5_ORDER, dims)}, row)
    # the inputs are rounded to 0.01 points, which moves the totals by well under 0.02
    assert 100 * summary.total == pytest.approx(total, abs=0.02)
    assert 100 * summary.quality == pytest.approx(quality, abs=0.02)
    assert 100 * summary.semantic == pytest.approx(semantic, abs=0.02)


def test_aggregate_cli_reads_a_folder_of_files_like_one_file(tmp_path):
    dims, (total, quality, semantic) = TABLE5["Self-Forcing"]
    scores = {d: v / 100 for d, v in zip(TABLE5_ORDER, dims)}
    results_file(tmp_path / "all_eval_results.json", scores)
    (tmp_path / "split" / "sub").mkdir(parents=True)
    results_file(tmp_path / "split" / "q_eval_results.json", {d: scores[d] for d in QUALITY})
    results_file(tmp_path / "split" / "sub" / "s_eval_results.json", {d: scores[d] for d in SEMANTIC})
    one = refinery("vbench", "aggregate", str(tmp_path / "all_eval_results.json"))
    split = refinery("vbench", "aggregate", str(tmp_path / "split"))
    assert one.returncode == 0 and split.returncode == 0, one.stderr + split.stderr
    assert one.stdout == split.stdout
    lines = dict(line.rsplit(None, 1) for line in one.stdout.splitlines())
    assert lines["Total Score"] == f"{total:.2f}%" and lines["Quality Score"] == f"{quality:.2f}%"
    assert lines["Semantic Score"] == f"{semantic:.2f}%" and lines["scene"] == "52.83%"
    as_json = json.loads(refinery("vbench", "aggregate", str(tmp_path / "split"), "format=json").stdout)
    assert as_json["total"] == pytest.approx(aggregate(scores, "x").total, abs=1e-15)


def test_aggregate_refuses_a_missing_dimension_instead_of_scoring_zero(tmp_path):
    scores = {d: 0.5 for d in DIMENSIONS if d != "scene"}
    path = results_file(tmp_path / "run_eval_results.json", scores)
    result = refinery("vbench", "aggregate", str(path))
    assert result.returncode == 2 and not result.stdout
    line, = result.stderr.strip().splitlines()
    assert str(path) in line and "lacks 1 of VBench's 16 dimensions (scene)" in line


@pytest.mark.parametrize("case", ["twice", "unknown dimension", "not a results file", "no file"])
def test_aggregate_bad_results(tmp_path, capsys, case):
    scores = {d: 0.5 for d in DIMENSIONS}
    if case == "twice":
        results_file(tmp_path / "a_eval_results.json", scores)
        results_file(tmp_path / "b_eval_results.json", {"color": 0.4})
        path, expected = tmp_path, "color is in both"
    elif case == "unknown dimension":
        path, expected = results_file(tmp_path / "x_eval_results.json", {**scores, "colour": 0.4}), "'colour'"
    elif case == "not a results file":
        path = tmp_path / "x_eval_results.json"
        path.write_text(json.dumps({d: 0.5 for d in DIMENSIONS}))
        expected = "is not [score, [per-video results]]"
    else:
        path, expected = tmp_path, "holds no *_eval_results.json"
    line = one_line_exit_2(capsys, "vbench", "aggregate", str(path))
    assert expected in line and str(tmp_path) in line


# -- a hand-made store ----------------------------------------------------------------------------

def smooth_video(i, frames=6, height=32, width=32):
    """Gradients (which H.264 keeps well) with a per-video, per-frame blue level."""
    y, x = np.mgrid[0:height, 0:width]
    video = np.zeros((frames, height, width, 3), np.uint8)
    video[..., 0] = x * 255 // (width - 1)
    video[..., 1] = y * 255 // (height - 1)
    video[..., 2] = ((40 * i + 30 * np.arange(frames)) % 256)[:, None, None]
    return video


def make_cell(root, prompts, seeds):
    store = Store(root)
    spec = {"suite": {"name": "t", "version": 1, "prompts": prompts}, "seeds": seeds}
    cell = store.cell(cell_key(spec))
    cell.write_spec(spec)
    for p, prompt in enumerate(prompts):
        for s, seed in enumerate(seeds):
            i = p * len(seeds) + s
            cell.write_video(i, smooth_video(i), {"index": i, "prompt": prompt, "seed": seed})
    cell.set_status("complete")
    return store, cell


def full_info(path, entries):
    path.write_text(json.dumps([{"prompt_en": p, "dimension": d} for p, d in entries]))
    return path


# -- export ---------------------------------------------------------------------------------------

def test_custom_export_names_prompts_and_frames(tmp_path):
    prompts = ["a red circle bouncing", "a blue square / falling"]
    _, cell = make_cell(tmp_path / "store", prompts, [3, 4])
    export = export_cell(cell, tmp_path / "out", "custom_input", fps=16, crf=17)
    assert list((tmp_path / "out").iterdir()) == [export.path] and export.path.name == cell.key
    names = {i: f"{i:05d}.mp4" for i in range(4)}
    assert export.videos == names and export.mode == "custom_input"
    assert sorted(p.name for p in export.video_dir.iterdir()) == sorted(names.values())
    mapping = json.loads(export.prompt_file.read_text())
    assert mapping == {names[i]: cell.read_record(i)["prompt"] for i in range(4)}
    for i, name in names.items():
        reader = __import__("imageio_ffmpeg").read_frames(str(export.video_dir / name))
        assert next(reader)["fps"] == 16
        frames = np.stack([np.frombuffer(b, np.uint8).reshape(32, 32, 3) for b in reader])
        assert frames.shape == (6, 32, 32, 3)
        assert np.abs(frames.astype(int) - cell.read_video(i)).mean() < 6  # lossy, same content and order


def test_standard_export_uses_vbench_names(tmp_path):
    suite = full_info(tmp_path / "full_info.json", [("a cat", ["color"]), ("a dog", ["scene"]),
                                                   ("a cow", ["color"])])
    # seeds 7 and 9 are samples 0 and 1; "a cat" twice (as in VBench's suite) maps to one set of files
    _, cell = make_cell(tmp_path / "store", ["a cat", "a dog", "a cat"], [7, 9])
    export = export_cell(cell, tmp_path / "out", "vbench_standard", 16, 17, suite)
    assert export.videos == {0: "a cat-0.mp4", 1: "a cat-1.mp4", 2: "a dog-0.mp4", 3: "a dog-1.mp4",
                             4: "a cat-0.mp4", 5: "a cat-1.mp4"}
    assert sorted(p.name for p in export.video_dir.iterdir()) == ["a cat-0.mp4", "a cat-1.mp4",
                                                                   "a dog-0.mp4", "a dog-1.mp4"]
    assert not export.prompt_file.exists()
    assert read_export(export.path) == export


@pytest.mark.parametrize("case", ["prompt not in suite", "more than 5 samples", "no suite"])
def test_standard_export_refusals(tmp_path, case):
    suite = full_info(tmp_path / "full_info.json", [("a cat", ["color"])])
    prompts, seeds = (["a cat", "a bird"], [0]) if case == "prompt not in suite" else (["a cat"], list(range(6)))
    _, cell = make_cell(tmp_path / "store", prompts, seeds)
    expected = {"prompt not in suite": "'a bird' is not in VBench's prompt suite",
                "more than 5 samples": "6 samples per prompt", "no suite": "set vbench.full_info"}[case]
    with pytest.raises(UsageError, match=expected):
        export_cell(cell, tmp_path / "out", "vbench_standard", 16, 17, None if case == "no suite" else suite)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("case", ["missing video", "corrupt video", "frames of different sizes", "exists"])
def test_export_bad_store_names_the_file_and_leaves_nothing(tmp_path, case):
    _, cell = make_cell(tmp_path / "store", ["a", "b"], [0])
    npy = cell.path / "videos" / "00001.npy"
    if case == "missing video":
        npy.unlink()
    elif case == "corrupt video":
        npy.write_bytes(b"not a numpy file")
    elif case == "frames of different sizes":
        cell.write_video(1, smooth_video(1, height=48), cell.read_record(1))
    else:
        (tmp_path / "out" / cell.key).mkdir(parents=True)
    with pytest.raises(UsageError) as error:
        export_cell(cell, tmp_path / "out", "custom_input", 16, 17)
    named = tmp_path / "out" / cell.key if case == "exists" else npy
    assert str(named) in str(error.value) and "\n" not in str(error.value)
    left = [p for p in (tmp_path / "out").iterdir()] if (tmp_path / "out").exists() else []
    assert left == ([tmp_path / "out" / cell.key] if case == "exists" else [])


@pytest.mark.slow
def test_export_cli_on_a_toy_run(tmp_path, capsys):
    store = f"paths.store={tmp_path / 'store'}"
    assert main(["run", *FAST, store]) == 0
    assert main(["vbench", "export", str(tmp_path / "out"), *FAST, store]) == 0
    out = capsys.readouterr().out
    export = read_export(next((tmp_path / "out").iterdir()))
    assert f"refinery vbench evaluate {export.path}" in out and "--mode custom_input" in out
    prompts = json.loads(export.prompt_file.read_text())
    records = [Store(tmp_path / "store").cell(export.cell).read_record(i) for i in sorted(export.videos)]
    assert [prompts[export.videos[r["index"]]] for r in records] == [r["prompt"] for r in records]
    assert probe_video(export.video_dir / export.videos[0]) == (32, 32)


# -- preflight ------------------------------------------------------------------------------------

def settings(tmp_path, python=sys.executable, dimensions=None, full_info_path=None):
    weights = tmp_path / "weights"
    return Settings(str(python), "cpu", weights / "vbench", weights / "torch", weights / "hf",
                    full_info_path, dimensions)


def place_weights(s, dims):
    for dim in dims:
        for root, weight in REQUIRED[dim]:
            path = s.root(root) / weight.relative_path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")


def test_preflight_lists_every_missing_weight_with_path_and_origin(tmp_path):
    s = settings(tmp_path)
    cache, torch_home = s.cache_dir, s.torch_home
    # expected layout: VBench's init_submodules(local=True), DINO's torch hub cache
    expected = {
        cache / "dino_model/facebookresearch_dino_main/hubconf.py": "github.com/facebookresearch/dino",
        cache / "dino_model/facebookresearch_dino_main/vision_transformer.py": "github.com/facebookresearch/dino",
        cache / "dino_model/facebookresearch_dino_main/utils.py": "github.com/facebookresearch/dino",
        cache / "dino_model/dino_vitbase16_pretrain.pth": "dl.fbaipublicfiles.com/dino/",
        torch_home / "hub/checkpoints/dino_vitbase16_pretrain.pth": "dl.fbaipublicfiles.com/dino/",
        cache / "clip_model/ViT-B-32.pt": "openaipublic.azureedge.net/clip/models/",
        cache / "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth": "LAION-AI/aesthetic-predictor",
    }
    dims = ["subject_consistency", "background_consistency", "appearance_style", "temporal_flickering"]
    # the aesthetic head is missing, its CLIP backbone is there
    place_weights(s, ["aesthetic_quality"])
    head = cache / "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth"
    head.unlink()
    listed = missing_weights([*dims, "aesthetic_quality"], s)
    assert len(listed) == len(expected)  # the shared CLIP ViT-B/32 once, ViT-L/14 not at all
    for path, origin in expected.items():
        line, = [entry for entry in listed if entry.startswith(f"{path} ")]
        assert origin in line
    assert "for background_consistency, appearance_style;" in " ".join(listed)
    assert missing_weights(["temporal_flickering"], s) == []


def custom_export(tmp_path):
    _, cell = make_cell(tmp_path / "store", ["a red circle bouncing", "a green square falling"], [0, 1])
    return export_cell(cell, tmp_path / "out", "custom_input", 16, 17)


def fake_python(tmp_path):
    """An interpreter whose `vbench` is a stand-in: it records how it was called and writes results
    whose per-video value is (10 * dimension position + video index) / 1000."""
    site = tmp_path / "site"
    (site / "vbench").mkdir(parents=True)
    (site / "vbench-9.9.9.dist-info").mkdir()
    (site / "vbench-9.9.9.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: vbench\n"
                                                             "Version: 9.9.9\n")
    (site / "vbench" / "__init__.py").write_text(f'''
import json, os, shutil, subprocess
DIMENSIONS = {list(DIMENSIONS)!r}
class VBench:
    def __init__(self, device, full_info_dir, output_path):
        self.call = {{"device": str(device), "full_info_dir": full_info_dir, "output_path": output_path}}
        os.makedirs(output_path, exist_ok=True)
    def evaluate(self, videos_path, name, prompt_list=[], dimension_list=None, local=False,
                 read_frame=False, mode="vbench_standard", **kwargs):
        wget = shutil.which("wget")
        env = {{k: os.environ.get(k) for k in ("VBENCH_CACHE_DIR", "TORCH_HOME", "HF_HOME", "HF_HUB_OFFLINE",
                                            "TRANSFORMERS_OFFLINE")}}
        self.call.update(videos_path=videos_path, name=name, prompt_list=prompt_list, local=local, mode=mode,
                         dimension_list=dimension_list, env=env,
                         wget=subprocess.run([wget, "https://example.com/w.pth"]).returncode)
        json.dump(self.call, open(os.path.join(self.call["output_path"], "fake_call.json"), "w"))
        files = sorted(os.listdir(videos_path))
        results = {{}}
        for dim in dimension_list:
            per_video = [{{"video_path": os.path.join(videos_path, f),
                          "video_results": (10 * DIMENSIONS.index(dim) + int(f[:5])) / 1000}} for f in files]
            results[dim] = [sum(v["video_results"] for v in per_video) / len(per_video), per_video]
        json.dump(results, open(os.path.join(self.call["output_path"], name + "_eval_results.json"), "w"))
''')
    marker = tmp_path / "python_started"
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\necho started >> "{marker}"\nPYTHONPATH="{site}" exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return python, marker


def test_evaluate_refuses_missing_weights_before_starting_anything(tmp_path, capsys):
    export = custom_export(tmp_path)
    python, marker = fake_python(tmp_path)
    s = settings(tmp_path)
    place_weights(s, CUSTOM_DIMENSIONS)
    gone = [s.cache_dir / "amt_model/amt-s.pth", s.torch_home / "hub/checkpoints/dino_vitbase16_pretrain.pth"]
    for path in gone:
        path.unlink()
    line = one_line_exit_2(capsys, "vbench", "evaluate", str(export.path), f"vbench.python={python}",
                           f"paths.weights={tmp_path / 'weights'}")
    assert "VBench needs 2 weight files that are missing" in line
    assert all(str(path) in line for path in gone) and "huggingface.co/lalala125/AMT" in line
    assert not marker.exists() and not export.result_dir.exists()


@pytest.mark.slow
def test_evaluate_runs_vbench_in_the_configured_python_then_ingest_feeds_reports(tmp_path, capsys):
    export = custom_export(tmp_path)
    python, marker = fake_python(tmp_path)
    s = settings(tmp_path)
    place_weights(s, CUSTOM_DIMENSIONS)
    overrides = [f"vbench.python={python}", f"paths.weights={tmp_path / 'weights'}", "vbench.device=cpu"]
    assert main(["vbench", "evaluate", str(export.path), *overrides]) == 0, capsys.readouterr().err
    assert marker.exists()
    call = json.loads((export.result_dir / "fake_call.json").read_text())
    assert call["local"] is True and call["mode"] == "custom_input" and call["device"] == "cpu"
    assert call["dimension_list"] == list(CUSTOM_DIMENSIONS)
    assert call["videos_path"] == str(export.video_dir.resolve())
    assert call["prompt_list"] == json.loads(export.prompt_file.read_text())
    assert call["env"] == {"VBENCH_CACHE_DIR": str(s.cache_dir.resolve()),
                           "TORCH_HOME": str(s.torch_home.resolve()), "HF_HOME": str(s.hf_home.resolve()),
                           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    assert call["wget"] == 1  # downloads fail at once
    run_info = json.loads(next(export.result_dir.glob("*_run.json")).read_text())
    assert run_info["vbench"] == "9.9.9"

    assert main(["vbench", "ingest", str(export.path), f"paths.store={tmp_path / 'store'}"]) == 0
    cell = Store(tmp_path / "store").cell(export.cell)
    payload = cell.read_scores()["vbench_custom"]
    assert payload["version"] == "9.9.9" and payload["videos"] == 4
    for dim in CUSTOM_DIMENSIONS:
        assert payload["values"][dim] == pytest.approx([(10 * DIMENSIONS.index(dim) + i) / 1000 for i in range(4)])
    df = collect(Store(tmp_path / "store"), [CellRef(cell.key)])
    row = df[(df["metric"] == "vbench_custom.aesthetic_quality") & (df["video"] == 3)]
    assert row["value"].item() == pytest.approx((10 * DIMENSIONS.index("aesthetic_quality") + 3) / 1000)


def test_ingest_standard_results_leaves_unread_videos_missing(tmp_path):
    suite = full_info(tmp_path / "full_info.json", [("a cat", ["color"]), ("a dog", ["scene"])])
    store, cell = make_cell(tmp_path / "store", ["a cat", "a dog"], [0])
    export = export_cell(cell, tmp_path / "out", "vbench_standard", 16, 17, suite)
    path = results_file(tmp_path / "r_eval_results.json", {"color": 0.25, "scene": 0.75},
                        {"color": {"a cat-0.mp4": 0.25}, "scene": {"a dog-0.mp4": 0.75}})
    _, payload = ingest(export, read_results(path), store)
    assert payload["metric"] == "vbench" and payload["version"] == "unknown"
    assert payload["values"] == {"color": [0.25, None], "scene": [None, 0.75]}
    assert payload["vbench"]["dimensions"] == {"color": 0.25, "scene": 0.75} and "total" not in payload["vbench"]
    strange = results_file(tmp_path / "s_eval_results.json", {"color": 0.5}, {"color": {"a bird-0.mp4": 0.5}})
    with pytest.raises(UsageError, match="a bird-0.mp4, which is not in the export"):
        ingest(export, read_results(strange), store)


def test_custom_mode_refuses_dimensions_that_need_the_suite(tmp_path, capsys):
    export = custom_export(tmp_path)
    line = one_line_exit_2(capsys, "vbench", "evaluate", str(export.path), "vbench.dimensions=[scene]")
    assert "dimension scene is not valid in custom_input mode" in line


# -- the video folder check -----------------------------------------------------------------------

@pytest.mark.parametrize("case", ["missing", "unreadable", "frames of different sizes", "stray file"])
def test_video_folder_check_names_the_file(tmp_path, capsys, case):
    export = custom_export(tmp_path)
    s = settings(tmp_path)
    place_weights(s, CUSTOM_DIMENSIONS)
    target = export.video_dir / "00002.mp4"
    if case == "missing":
        target.unlink()
    elif case == "unreadable":
        target.write_bytes(b"\x00garbage" * 64)
    elif case == "frames of different sizes":
        write_mp4(target, smooth_video(2, height=64, width=48), 16, 17)
    else:
        target = export.video_dir / "notes.txt"
        target.write_text("x")
    python, marker = fake_python(tmp_path)
    line = one_line_exit_2(capsys, "vbench", "evaluate", str(export.path), f"vbench.python={python}",
                           f"paths.weights={tmp_path / 'weights'}")
    assert str(target) in line
    assert {"missing": "are missing", "unreadable": "is unreadable", "stray file": "is not an mp4",
            "frames of different sizes": "has frames of 48x64 but"}[case] in line
    assert not export.result_dir.exists()


def test_standard_preflight_expects_five_samples_of_each_prompt_of_the_dimensions(tmp_path):
    suite = full_info(tmp_path / "full_info.json", [("a cat", ["scene"]), ("a dog", ["color"])])
    _, cell = make_cell(tmp_path / "store", ["a cat", "a dog"], list(range(5)))
    export = export_cell(cell, tmp_path / "out", "vbench_standard", 16, 17, suite)
    s = settings(tmp_path, python=fake_python(tmp_path)[0], dimensions=["scene"], full_info_path=suite)
    place_weights(s, ["scene", "color"])
    plan = preflight(export.path, s)
    assert plan.dimensions == ["scene"] and plan.command[plan.command.index("--full-info") + 1] == str(suite)
    # the GRiT dimensions also need detectron2, which the stand-in environment lacks
    with pytest.raises(UsageError, match="lacks detectron2"):
        preflight(export.path, settings(tmp_path, python=s.python, dimensions=["color"], full_info_path=suite))
    (export.video_dir / "a cat-4.mp4").unlink()
    (export.video_dir / "a dog-4.mp4").unlink()  # not read for scene
    with pytest.raises(UsageError, match="1 of the 5 videos VBench will read are missing"):
        check_videos(export.video_dir, [f"a cat-{i}.mp4" for i in range(5)], only_expected=False)
    with pytest.raises(UsageError, match="a cat-4.mp4"):
        preflight(export.path, s)


# -- several workers ------------------------------------------------------------------------------

def vbench_like_python(tmp_path):
    """An interpreter whose `vbench` scores two dimensions as the real package does on one process:
    temporal_flickering (vbench/temporal_flickering.py: per-video MAE of consecutive frames in float32,
    np.mean over the videos in os.listdir order) and a frame-weighted subject_consistency (per-frame
    pair similarities summed over all videos, divided by the pair count). It also notes each call's
    CUDA_VISIBLE_DEVICES and video folder."""
    site = tmp_path / "vbsite"
    (site / "vbench").mkdir(parents=True)
    (site / "vbench" / "__init__.py").write_text('''
import json, os
import numpy as np, imageio_ffmpeg

def frames(path):
    reader = imageio_ffmpeg.read_frames(path)
    width, height = next(reader)["size"]
    return [np.frombuffer(b, np.uint8).reshape(height, width, 3) for b in reader]

def flicker(path):
    f = frames(path)
    maes = [np.mean(np.abs(np.float32(a) - np.float32(b))) for a, b in zip(f, f[1:])]
    return (255.0 - np.mean(np.array(maes)).item()) / 255.0

class VBench:
    def __init__(self, device, full_info_dir, output_path):
        self.output_path = output_path
        os.makedirs(output_path, exist_ok=True)
    def evaluate(self, videos_path, name, prompt_list=[], dimension_list=None, local=False, mode="", **kw):
        listed = [os.path.join(videos_path, f) for f in os.listdir(videos_path)]
        results = {}
        for dim in dimension_list:
            if dim == "temporal_flickering":
                per = [{"video_path": p, "video_results": flicker(p)} for p in listed]
                results[dim] = [np.mean([v["video_results"] for v in per]), per]
            else:
                sim, cnt, per = 0.0, 0, []
                for p in listed:
                    levels = [float(f.mean()) / 255 for f in frames(p)]
                    pair = [1 - abs(a - b) for a, b in zip(levels, levels[1:])]
                    sim, cnt = sim + sum(pair), cnt + len(pair)
                    per.append({"video_path": p, "video_results": sum(pair) / len(pair)})
                results[dim] = [sim / cnt, per]
        with open(os.path.join(self.output_path, name + "_eval_results.json"), "w") as f:
            json.dump(results, f)
        with open(os.path.join(os.environ["CALLS"], name + ".json"), "w") as f:
            json.dump({"videos": videos_path, "count": len(listed), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                       "dimensions": dimension_list}, f)
''')
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{site}" exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return python


@pytest.mark.slow
def test_two_workers_reproduce_the_single_process_numbers_exactly(tmp_path, capsys, monkeypatch):
    """One VBench call per worker over a share of the videos (temporal_flickering), or over all of them
    for a frame-weighted dimension (subject_consistency): the merged file equals one process's."""
    _, cell = make_cell(tmp_path / "store", [f"prompt {p}" for p in range(5)], [0])  # 5 videos: shares of 3 and 2
    for i in range(5):  # frame counts differ, so frame- and video-weighted means differ
        cell.write_video(i, smooth_video(i, frames=4 + 2 * i), cell.read_record(i))
    python = vbench_like_python(tmp_path)
    dims = "vbench.dimensions=[temporal_flickering,subject_consistency]"
    monkeypatch.setenv("CALLS", str(tmp_path / "calls"))
    results = {}
    for workers in (1, 2):
        (tmp_path / "calls").mkdir()
        s = settings(tmp_path)
        place_weights(s, ["subject_consistency"])
        export = export_cell(cell, tmp_path / f"out{workers}", "custom_input", 16, 17)
        overrides = [f"vbench.python={python}", f"paths.weights={tmp_path / 'weights'}", "vbench.device=cpu", dims]
        assert main(["vbench", "evaluate", str(export.path), *overrides, f"vbench.workers={workers}"]) == 0, \
            capsys.readouterr().err
        results[workers] = json.loads(next(export.result_dir.glob("*_eval_results.json")).read_text())
        calls = [json.loads(p.read_text()) for p in sorted((tmp_path / "calls").iterdir())]
        subprocess.run(["rm", "-rf", str(tmp_path / "calls")], check=True)
        assert not (export.path / ".shards").exists()
        if workers == 2:
            assert sorted(c["count"] for c in calls if c["dimensions"] == ["temporal_flickering"]) == [2, 3]
            whole, = [c for c in calls if c["dimensions"] == ["subject_consistency"]]
            assert whole["videos"] == str(export.video_dir.resolve())
        one_path = str(export.video_dir.resolve())
        for dim in ("temporal_flickering", "subject_consistency"):
            results[workers][dim][1] = [{**v, "video_path": v["video_path"].replace(one_path, "VIDEOS")}
                                        for v in results[workers][dim][1]]
    assert results[2] == results[1]  # scores to the last bit, per-video lists in the same order
    per_video = [v["video_results"] for v in results[1]["subject_consistency"][1]]
    assert results[1]["subject_consistency"][0] != pytest.approx(np.mean(per_video), abs=1e-9)  # frame-weighted
