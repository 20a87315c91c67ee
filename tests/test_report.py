import numpy as np
import pytest

from harness.report import CellRef, bootstrap_ci, collect, summarize, write_report
from harness.store import Store

TINY = np.zeros((1, 2, 2, 3), np.uint8)


def _cell(store, key, state="complete", ssim=(), nfe=None, suite="eval-v1", seeds=(0, 1)):
    """A cell with one video per ssim value (prompts × seeds) and the scores written by hand."""
    cell = store.cell(key)
    cell.write_spec({"key": key, "suite": suite, "seeds": list(seeds)})
    for i in range(len(ssim)):
        cell.write_video(i, TINY, {"prompt": f"<b>p{i // 2}</b>", "seed": i % 2})
    if ssim:
        cell.write_scores("dynamics", {
            "metric": "dynamics", "version": "1",
            "higher_is_better": {"ssim": True, "flicker": False},
            "values": {"ssim": list(ssim), "flicker": [1.0 - v for v in ssim]},
            "videos": len(ssim)})
        cell.write_scores("compute", {
            "metric": "compute", "version": "1", "higher_is_better": {"nfe": False},
            "values": {"nfe": [nfe] * len(ssim)}, "videos": len(ssim)})
    cell.set_status(state, error="boom" if state == "failed" else None)
    return CellRef(key, {"method": key.split("-")[0], "steps": str(nfe)})


@pytest.fixture
def sweep(tmp_path):
    store = Store(tmp_path / "store")
    refs = [_cell(store, "base-4", ssim=(0.5, 0.6, 0.7, 0.8), nfe=4),
            _cell(store, "bon-4", ssim=(0.8, 0.9, 0.85, 0.95), nfe=16),
            _cell(store, "pnp-4", state="failed", nfe=8),
            CellRef("lora-4", {"method": "lora", "steps": "4"})]  # never run
    return store, refs


def test_bootstrap_ci_contains_mean_is_deterministic_and_narrows():
    rng = np.random.default_rng(1)
    small, large = rng.normal(2.0, 1.0, 20), rng.normal(2.0, 1.0, 2000)
    low, high = bootstrap_ci(small)
    assert low < small.mean() < high
    assert bootstrap_ci(small) == (low, high)
    big_low, big_high = bootstrap_ci(large)
    assert big_high - big_low < (high - low) / 3
    assert bootstrap_ci(np.array([3.0])) == (3.0, 3.0)
    assert all(np.isnan(bootstrap_ci(np.array([]))))


def test_collect_and_summarize(sweep):
    store, refs = sweep
    df = collect(store, refs)
    assert {"cell", "method", "steps", "state", "video", "prompt", "seed", "metric", "value",
            "higher_is_better"} <= set(df.columns)
    assert len(df[df["cell"] == "base-4"]) == 4 * 3  # videos × metric outputs
    assert df.loc[df["cell"] == "pnp-4", "state"].tolist() == ["failed"]
    assert df.loc[df["cell"] == "lora-4", "state"].tolist() == ["missing"]
    summary = summarize(df).set_index(["cell", "metric"])
    assert summary.loc[("base-4", "dynamics.ssim"), "mean"] == pytest.approx(0.65)
    assert summary.loc[("bon-4", "dynamics.flicker"), "mean"] == pytest.approx(0.125)
    assert summary.loc[("bon-4", "compute.nfe"), "n"] == 4
    row = summary.loc[("base-4", "dynamics.ssim")]
    assert row["ci_low"] <= row["mean"] <= row["ci_high"]


def test_report_shows_states_best_values_and_is_deterministic(sweep, tmp_path):
    store, refs = sweep
    paths = write_report(store, refs, tmp_path / "out", "Demo")
    md = paths["md"].read_text()
    assert "over 4 videos" in md
    assert "dynamics.ssim ↑" in md and "dynamics.flicker ↓" in md
    assert "**0.875 ± " in md  # bon has the best ssim
    lines = {line.split(" | ")[0].strip("| "): line for line in md.splitlines()}
    assert lines["pnp"].count("failed") == 4 and lines["lora"].count("missing") == 4
    first_md, first_csv = paths["md"].read_bytes(), paths["csv"].read_bytes()
    again = write_report(store, refs, tmp_path / "out", "Demo")
    assert again["md"].read_bytes() == first_md and again["csv"].read_bytes() == first_csv
    header = "cell,method,steps,state,metric,mean,ci_low,ci_high,n"
    assert first_csv.decode().splitlines()[0] == header


def test_incomparable_cells_get_separate_tables(tmp_path):
    store = Store(tmp_path / "store")
    refs = [_cell(store, "a-1", ssim=(0.5, 0.6), nfe=4),
            _cell(store, "b-1", ssim=(0.7, 0.8), nfe=4, suite="eval-v2")]
    md = write_report(store, refs, tmp_path / "out", "T")["md"].read_text()
    headings = [line for line in md.splitlines() if line.startswith("## ")]
    assert headings == ['## suite = &quot;eval-v1&quot;', '## suite = &quot;eval-v2&quot;']
    tables = md.split("## ")[1:]
    assert "a-1" in tables[0] and "b-1" not in tables[0] and "b-1" in tables[1]


def test_html_escapes_labels_and_titles(sweep, tmp_path):
    store, refs = sweep
    refs = [*refs, CellRef("evil", {"method": "<script>alert(1)</script>", "steps": "1"})]
    paths = write_report(store, refs, tmp_path / "out", "<i>title</i>")
    page = paths["html"].read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<i>" not in page
    assert "<script>" not in paths["md"].read_text()


def test_figure_is_written_or_skipped(sweep, tmp_path):
    store, refs = sweep
    paths = write_report(store, refs, tmp_path / "out", "T")
    assert paths["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](figure.png)" in paths["md"].read_text()
    skipped = write_report(store, refs, tmp_path / "out", "T", figure=("compute.flops", None))
    assert "figure" not in skipped and not (tmp_path / "out" / "figure.png").exists()
    assert "No figure" in skipped["md"].read_text()


def _scored(store, key, reward, motion):
    """A cell with a training reward and a held-out motion score (higher is better) per video."""
    cell = store.cell(key)
    cell.write_spec({"key": key, "suite": "eval-v1", "seeds": [0, 1]})
    for i in range(len(reward)):
        cell.write_video(i, TINY, {"prompt": f"p{i // 2}", "seed": i % 2})
    cell.write_scores("reward", {"metric": "reward", "version": "1", "higher_is_better": {"world_reward": True},
                                 "values": {"world_reward": list(reward)}, "videos": len(reward)})
    cell.write_scores("bench", {"metric": "bench", "version": "1", "higher_is_better": {"motion": True},
                                "values": {"motion": list(motion)}, "videos": len(motion)})
    cell.set_status("complete")
    return CellRef(key, {"method": key})


def test_reward_hacking_is_flagged_only_when_the_reward_rises_and_a_held_out_score_falls(tmp_path):
    from harness.report import reward_hacking

    store = Store(tmp_path / "store")
    steady = [0.50, 0.52, 0.48, 0.51, 0.49, 0.50]
    refs = [_scored(store, "base", reward=[1.0, 1.1, 0.9, 1.0, 1.05, 0.95], motion=steady),
            _scored(store, "hacker", reward=[2.0, 2.1, 1.9, 2.0, 2.05, 1.95], motion=[0.1] * 6),
            _scored(store, "honest", reward=[2.0, 2.1, 1.9, 2.0, 2.05, 1.95], motion=steady),
            _scored(store, "broken", reward=[1.0, 1.1, 0.9, 1.0, 1.05, 0.95], motion=[0.1] * 6)]
    summary = summarize(collect(store, refs))
    flags = reward_hacking(summary, "base", "reward.world_reward", ["bench.motion"])
    assert flags == {"base": "", "hacker": "bench.motion", "honest": "", "broken": ""}
    paths = write_report(store, refs, tmp_path / "out", "t", baseline="base",
                         hacking=("reward.world_reward", ["bench.motion"]))
    row = next(line for line in paths["md"].read_text().splitlines() if line.startswith("| hacker"))
    assert "**bench.motion**" in row
