"""The report: summaries with prompt-clustered CIs, paired differences with Holm, what is bold and what
is a tie, separate sections for incomparable cells, escaping, figures, LaTeX, timings, bad input."""
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.errors import UsageError
from harness.store.cells import CellRef
from harness.report.tables import build_report, collect, summarize
from harness.report.write import report_folder, write_report
from harness.report.figures import DPI, PANEL_INCHES, cost_quality_figures, pareto_front
from harness.report.resampling import Resampling
from harness.report.stats import clustered_mean, holm, paired_difference
from harness.store.cells import Store
from harness.report.timing import Timing, write_timing
from synthetic import PROMPTS, base_values, write_cell

N = len(PROMPTS) * 2
CLUSTERS = np.repeat(PROMPTS, 2)


@pytest.fixture
def sweep(tmp_path):
    """base, three methods with planted effects, a failed and a never-run cell."""
    store = Store(tmp_path / "store")
    base = base_values(seed=1)
    rng = np.random.default_rng(7)
    refs = [write_cell(store, "base", {"bench.score": base, "bench.flat": np.full(N, 0.5)}),
            write_cell(store, "better", {"bench.score": base + 0.05, "bench.flat": np.full(N, 0.5)}, nfe=56.0),
            write_cell(store, "same", {"bench.score": base + rng.normal(0, 0.02, N), "bench.flat": np.full(N, 0.5)}),
            write_cell(store, "worse", {"bench.score": base - 0.1, "bench.flat": np.full(N, 0.5)}),
            write_cell(store, "crashed", state="failed"),
            CellRef("never", {"method": "never"})]
    return store, refs, base


def _md_rows(md: str, caption: str) -> dict[str, str]:
    """The rows of the Markdown table under `### caption` by their first cell; the header as "header"."""
    lines = md.split(f"### {caption}", 1)[1].split("\n\n", 2)[1].splitlines()
    return {"header": lines[0], **{line.split(" | ")[0].strip("| "): line for line in lines[2:]}}


def test_collect_and_summarize_use_prompt_clustered_cis(sweep):
    store, refs, base = sweep
    df = collect(store, refs)
    assert {"cell", "method", "state", "video", "prompt", "seed", "metric", "value"} <= set(df.columns)
    assert df.loc[df["cell"] == "crashed", "state"].tolist() == ["failed"]
    assert df.loc[df["cell"] == "never", "state"].tolist() == ["missing"]
    summary = summarize(df).set_index(["cell", "metric"])
    row = summary.loc[("base", "bench.score")]
    expected = clustered_mean(base, CLUSTERS)
    assert (row["mean"], row["ci_low"], row["ci_high"], row["n"], row["prompts"]) == \
        pytest.approx((expected.mean, expected.ci_low, expected.ci_high, N, len(PROMPTS)))


def test_paired_csv_has_the_differences_with_holm_across_the_methods(sweep, tmp_path):
    store, refs, base = sweep
    paths = write_report(store, refs, tmp_path / "out", "T", metrics=["bench.score"], baseline="base")
    paired = pd.read_csv(paths["paired.csv"])
    assert list(paired.columns) == ["cell", "method", "metric", "baseline_cell", "delta", "ci_low", "ci_high",
                                    "p_value", "p_holm", "n_pairs", "mde"]
    paired = paired.set_index("cell")
    assert sorted(paired.index) == ["better", "same", "worse"]  # complete cells only, not the baseline
    assert paired.loc["better", "delta"] == pytest.approx(0.05)
    assert paired.loc["worse", "delta"] == pytest.approx(-0.1)
    assert (paired["n_pairs"] == N).all()
    same_scores = collect(store, [refs[2]]).query("metric == 'bench.score'")["value"].to_numpy()
    reference = paired_difference(same_scores, base, CLUSTERS)
    assert (paired.loc["same", "ci_low"], paired.loc["same", "ci_high"], paired.loc["same", "p_value"],
            paired.loc["same", "mde"]) == pytest.approx((reference.ci_low, reference.ci_high, reference.p_value,
                                                         reference.mde))
    assert paired["p_holm"].to_numpy() == pytest.approx(holm(paired["p_value"].to_numpy()))
    md = paths["report.md"].read_text()
    rows = _md_rows(md, "Paired differences against method=base")
    assert rows["better"].count("*") == 1 and rows["worse"].count("*") == 1 and "*" not in rows["same"]
    assert f"MDE {paired.loc['same', 'mde']:.3f}" in rows["same"] and "MDE" not in rows["better"]


def test_bold_only_where_the_best_is_significantly_ahead(tmp_path):
    store = Store(tmp_path / "store")
    base = base_values(seed=3)
    shift = np.repeat([0.01, -0.01] * 4, 2)  # runner-up within noise of the best
    refs = [write_cell(store, "base", {"m.clear": base, "m.close": base}),
            write_cell(store, "lead", {"m.clear": base + 0.1, "m.close": base + 0.011 + shift}),
            write_cell(store, "next", {"m.clear": base + 0.02, "m.close": base + 0.01 - shift})]
    md = write_report(store, refs, tmp_path / "out", "T", metrics=["m"], baseline="base")["report.md"].read_text()
    rows = _md_rows(md, "m")
    assert rows["header"].split(" | ")[1:3] == ["m.clear ↑", "m.close ↑"]
    lead, runner = rows["lead"].split(" | "), rows["next"].split(" | ")
    assert lead[1].startswith("**") and not runner[1].startswith("**")  # m.clear: lead is ahead of all
    assert lead[2].endswith("≈") and runner[2].endswith("≈") and "**" not in lead[2]  # m.close: a tie
    assert not rows["base"].split(" | ")[2].endswith("≈")  # far behind: not part of the tie


def test_report_is_deterministic_and_shows_states(sweep, tmp_path):
    store, refs, _ = sweep
    paths = write_report(store, refs, tmp_path / "out", "Demo", baseline="base")
    md = paths["report.md"].read_text()
    assert "resampling prompts with replacement" in md and "2000 draws" in md  # the one statistics line
    rows = _md_rows(md, "bench")
    assert rows["crashed"].count("failed") == 3  # both scores and the state
    never = md.split("## Not started (suite and seeds unknown)", 1)[1]
    assert _md_rows(never, "bench")["never"].count("missing") == 3
    first = {name: paths[name].read_bytes() for name in ("report.md", "report.csv", "paired.csv", "report.tex")}
    again = write_report(store, refs, tmp_path / "out", "Demo", baseline="base")
    assert {name: again[name].read_bytes() for name in first} == first
    header = pd.read_csv(paths["report.csv"]).columns.tolist()
    assert header == ["cell", "method", "state", "metric", "mean", "ci_low", "ci_high", "n", "prompts"]


def test_incomparable_cells_get_separate_sections(tmp_path):
    store = Store(tmp_path / "store")
    refs = [write_cell(store, "a", {"m.x": base_values()}),
            write_cell(store, "b", {"m.x": base_values()}, suite_version=2)]
    md = write_report(store, refs, tmp_path / "out", "T")["report.md"].read_text()
    headings = [line for line in md.splitlines() if line.startswith("## ")]
    assert len(headings) == 2 and all(h.startswith("## suite = ") for h in headings)
    sections = md.split("\n## ")[1:]
    assert "| a |" in sections[0] and "| b |" not in sections[0] and "| b |" in sections[1]


def test_strings_from_prompts_and_configs_are_escaped(sweep, tmp_path):
    store, refs, _ = sweep
    refs = [*refs[:4], CellRef("evil", {"method": "<script>alert(1)</script>"})]
    paths = write_report(store, refs, tmp_path / "out", "<i>title</i>", baseline="base")
    page = paths["report.html"].read_text()
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<i>title" not in page and "<b>p0</b>" not in page and "&lt;b&gt;p0&lt;/b&gt;" in page
    assert "<script>alert" not in paths["report.md"].read_text()
    assert "<script>" not in paths["report.tex"].read_text() and r"$<$script$>$" in paths["report.tex"].read_text()


def test_html_is_one_self_contained_file_with_figures_gallery_and_metadata(sweep, tmp_path):
    store, refs, _ = sweep
    paths = write_report(store, refs, tmp_path / "out", "T", baseline="base", headline=["bench.score"])
    page = paths["report.html"].read_text()
    assert "http://" not in page and "https://" not in page and 'src="data:' in page
    assert page.count('src="data:image/gif;base64,') == 4 * 4  # 4 prompts x the 4 complete cells
    gif = page.split('src="data:image/gif;base64,', 1)[1].split('"', 1)[0]
    import base64
    animation = Image.open(io.BytesIO(base64.b64decode(gif)))
    assert animation.n_frames == 6 and animation.size == (128, 128)  # every frame, 8 px scaled up 16x
    assert "git commit" in page and "d1" in page  # the model's weight digest
    assert paths["figure-bench.score.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](figure-bench.score.png)" in paths["report.md"].read_text()


def test_figures_follow_the_headline_and_stale_ones_go(sweep, tmp_path):
    store, refs, _ = sweep
    write_report(store, refs, tmp_path / "out", "T", baseline="base", headline=["bench.score", "bench.flat"])
    assert sorted(p.name for p in (tmp_path / "out").glob("figure*.png")) == \
        ["figure-bench.flat.png", "figure-bench.score.png"]
    write_report(store, refs, tmp_path / "out", "T", baseline="base", headline=["bench.score"])
    assert [p.name for p in (tmp_path / "out").glob("figure*.png")] == ["figure-bench.score.png"]


def test_pareto_front():
    points = [(1, 0.5), (2, 0.4), (2, 0.7), (3, 0.6), (4, 0.9), (4, 0.8)]
    assert pareto_front(points, higher_is_better=True) == [(1, 0.5), (2, 0.7), (4, 0.9)]
    assert pareto_front(points, higher_is_better=False) == [(1, 0.5), (2, 0.4)]


def _scored(store, key, reward, motion):
    return write_cell(store, key, {"reward.world_reward": reward, "bench.motion": motion})


def test_reward_hacking_is_flagged_only_when_the_reward_rises_and_a_held_out_score_falls(tmp_path):
    store = Store(tmp_path / "store")
    reward, motion = base_values(seed=4), base_values(seed=5)
    refs = [_scored(store, "base", reward, motion),
            _scored(store, "hacker", reward + 1.0, motion - 0.3),
            _scored(store, "honest", reward + 1.0, motion),
            _scored(store, "broken", reward, motion - 0.3),
            _scored(store, "nudged", reward + 1.0, motion - 0.01)]  # significant, but within base's CI
    paths = write_report(store, refs, tmp_path / "out", "t", baseline="base",
                         hacking=("reward.world_reward", ["bench.motion"]))
    rows = _md_rows(paths["report.md"].read_text(), "Summary: cost and headline scores")
    assert rows["hacker"].rstrip().split(" | ")[-3] == "**bench.motion**"
    assert all(rows[k].split(" | ")[-3] == "" for k in ("base", "honest", "broken", "nudged"))
    paired = pd.read_csv(paths["paired.csv"]).set_index(["cell", "metric"])
    assert paired.loc[("nudged", "bench.motion"), "p_holm"] < 0.05  # the drop is real, and small


def test_overheads_count_the_true_extra_forwards(tmp_path):
    store = Store(tmp_path / "store")
    refs = [write_cell(store, "base", {"m.x": base_values()}),
            write_cell(store, "refiner", {"m.x": base_values()}, nfe=49.0)]
    write_cell(store, "refiner", nfe=49.0)  # same spec: only the counts are rewritten below
    cell = store.cell("refiner")
    scores = cell.read_scores()["compute"]
    scores["values"]["cache_passes"] = [33.0] * N  # AutoRefiner: 6 + 21 previous-output + 6 history passes
    cell.write_scores("compute", scores)
    csv = pd.read_csv(write_report(store, refs, tmp_path / "out", "T", metrics=["overhead"], baseline="base")
                      ["report.csv"]).set_index(["cell", "metric"])["mean"]
    assert csv[("refiner", "overhead.delta_nfe")] == 21 and csv[("refiner", "overhead.delta_forwards")] == 48


def test_latex_in_a_papers_layout(sweep, tmp_path):
    store, refs, _ = sweep
    layout = {"caption": "Table 2 & more", "rows": {"base": "Toy", "better": "+ Better"},
              "groups": [{"name": "Compute overhead", "columns": {"overhead.delta_nfe": "ΔNFE ↓",
                                                                  "timing.fps_vs_base": "FPS"}},
                         {"name": "Quality ↑", "columns": {"bench.score": "Score", "bench.flat": "Flat"}}]}
    tex = write_report(store, refs, tmp_path / "out", "T", baseline="base", latex=layout)["report.tex"].read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"\multicolumn{2}{c}{Compute overhead}" in tex and r"\cmidrule(lr){2-3}" in tex
    assert r"$\Delta$NFE $\downarrow$" in tex and r"Table 2 \& more" in tex
    toy = next(line for line in tex.splitlines() if line.startswith("Toy &"))
    assert toy.split(" & ")[1] == "0" and toy.split(" & ")[2] == "---"  # no timing pass: no FPS
    assert any(line.startswith("+ Better &") for line in tex.splitlines())
    bad = {**layout, "groups": [{"name": "x", "columns": {"bench.nope": "Nope"}}]}
    with pytest.raises(UsageError, match="bench.nope"):
        write_report(store, refs, tmp_path / "bad", "T", baseline="base", latex=bad)


def _timing(cell: str, seconds: list[float], base_seconds: list[float], load: float = 0.2) -> Timing:
    return Timing(cell, "base", 4, 1, len(seconds), 40, seconds, base_seconds, "2026-12-01T10:00:00+00:00",
                  "hostA", "CPU X", 2, "CPU", "2.14", [0.1, load], 2, [1.0] * len(seconds), [0.3] * len(seconds))


def test_fps_comes_from_the_timing_pass_never_from_generation(sweep, tmp_path):
    store, refs, _ = sweep
    options = dict(metrics=["bench", "compute.fps", "compute.nfe"], baseline="base",
                   generation_timings=frozenset({"compute.fps"}))
    untimed = write_report(store, refs, tmp_path / "a", "T", **options)["report.md"].read_text()
    assert "fps" not in _md_rows(untimed, "Summary: cost and headline scores")["header"].lower()
    assert "Timed during generation, not shown as scores" in untimed
    timing = _timing("better", [0.4, 0.5, 0.6], [0.2, 0.2, 0.2])
    write_timing(store.root, timing)
    timed = write_report(store, refs, tmp_path / "b", "T", timings={"better": timing}, **options)
    md = timed["report.md"].read_text()
    rows = _md_rows(md, "Summary: cost and headline scores")
    assert rows["header"].split(" | ")[2:4] == ["FPS ↑", "FPS ÷ base ↑"]
    assert rows["better"].split(" | ")[2:4] == ["80.00", "0.40"]  # 40 frames / 0.5 s; median(0.2 / s)
    assert rows["base"].split(" | ")[2:4] == ["200.00", "1.00"]
    assert "2026-12-01 10:00 UTC on hostA (CPU X, 2 threads, CPU)" in md and "interleaved" in md
    assert "loaded" not in md
    busy = _timing("better", [0.4, 0.5, 0.6], [0.2, 0.2, 0.2], load=5.0)  # 5 runnable on 2 cores
    md = write_report(store, refs, tmp_path / "c", "T", timings={"better": busy}, **options)["report.md"].read_text()
    assert _md_rows(md, "Summary: cost and headline scores")["better"].split(" | ")[3] == "**0.40 (loaded)**"
    assert "1 of 1 passes ran while other processes loaded the machine (1-minute load up to 5.0 on 2 cores)" in md


def test_the_cost_figure_draws_time_only_after_a_timing_pass(sweep):
    """Without a timing pass: the NFE panel alone, and a caption saying how to get FPS; with one, a
    second panel of the same size beside it."""
    store, refs, _ = sweep
    options = dict(headline=["bench.score"], baseline="base", resampling=Resampling(draws=100, permutations=99))
    (untimed,) = cost_quality_figures(build_report(store, refs, "T", **options))
    timing = _timing("better", [0.4, 0.5, 0.6], [0.2, 0.2, 0.2])
    (timed,) = cost_quality_figures(build_report(store, refs, "T", timings={"better": timing}, **options))
    assert "`refinery bench`" in untimed.caption and "refinery bench" not in timed.caption
    widths = [Image.open(io.BytesIO(f.png)).width for f in (untimed, timed)]
    assert widths[1] - widths[0] == round(PANEL_INCHES * DPI)


def test_bad_input_is_refused_before_anything_is_written(sweep, tmp_path):
    store, refs, _ = sweep
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="baseline cell crashed .* failed"):
        write_report(store, refs, out, "T", baseline="crashed")
    write_cell(store, "empty", {"bench.score": [float("nan")] * N})
    with pytest.raises(UsageError, match="'bench.score' has no values .* empty"):
        write_report(store, [CellRef("empty")], out, "T", metrics=["bench.score"])
    with pytest.raises(UsageError, match="headline metric 'bench.nope'"):
        write_report(store, refs, out, "T", headline=["bench.nope"])
    with pytest.raises(UsageError, match="no cell has scores for metric 'nope'"):
        write_report(store, refs, out, "T", metrics=["nope"])
    assert not out.exists()


def test_report_folders_of_other_overrides_never_collide():
    root = Path("reports")
    assert report_folder(root, "quickstart", ["experiment=quickstart"]) == root / "quickstart"
    a = report_folder(root, "quickstart", ["experiment=quickstart", "seed=1"])
    b = report_folder(root, "quickstart", ["experiment=quickstart", "seed=2"])
    c = report_folder(root, "quickstart", ["seed=1", "paths.reports=/elsewhere"])
    assert a != b and a == c and a.name.startswith("quickstart@seed=1-")
    assert report_folder(root, "x", ["a/b=<c>"]).name.split("-")[0] == "x@a_b=_c"


def test_resampling_settings_reach_the_numbers(sweep, tmp_path):
    store, refs, _ = sweep
    few = write_report(store, refs, tmp_path / "a", "T", baseline="base", resampling=Resampling(draws=50, seed=9))
    assert "50 draws" in few["report.md"].read_text() and "seed 9" in few["report.md"].read_text()
    assert few["report.csv"].read_bytes() != write_report(store, refs, tmp_path / "b", "T", baseline="base")[
        "report.csv"].read_bytes()
