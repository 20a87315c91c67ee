"""`refinery run | report | bench | leaderboard` end to end on small real cells: headline lines, labels,
the timing pass in the report, rank intervals, and bad input (one line, exit 2, nothing written)."""
import pandas as pd
import pytest

from conftest import FAST, fast_with
from conftest import refinery_here as refinery

pytestmark = pytest.mark.slow  # CLI runs, sweeps and benches (in this process)

# 2 samplers' steps x 2 seeds of the quickstart experiment, at FAST's size
CELLS = [*(o for o in FAST if not o.startswith("sampler.steps")), "experiment=quickstart", "sampler=stochastic",
         "report.baseline='sampler.steps=2'"]  # each test sets sampler.steps (a key is given once)


def ok(*args) -> str:
    result = refinery(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def refused(*args) -> str:
    result = refinery(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refinery: error:"), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "store"
    ok("sweep", *CELLS, "sampler.steps=2,3", "seed=0,1", f"paths.store={root}")
    return root


def test_run_ends_with_the_headline_scores_of_its_cell(store):
    out = ok("run", *CELLS, "sampler.steps=2", "seed=0", f"paths.store={store}",
             "report.headline=[dynamics.ssim,world_bench.total,nope.score]")
    lines = out.strip().splitlines()[-3:]
    assert lines[0].startswith("  dynamics.ssim ↓: ") and "95% CI [" in lines[0] and "(4 videos, 4 prompts)" in lines[0]
    assert lines[1].startswith("  world_bench.total ↑: ")
    assert lines[2] == "  nope.score: not scored (add its metric to the run's metric config)"


def test_report_of_a_single_cell_is_labelled_by_its_method(store, tmp_path):
    out = ok("report", *FAST, "sampler.steps=2", f"paths.store={store}", f"paths.reports={tmp_path}")
    (md,) = tmp_path.glob("adhoc*/report.md")
    assert "| method |" in md.read_text() and "| base |" in md.read_text() and "| run |" not in md.read_text()
    assert "report.html" in out


def test_bench_then_report_shows_fps_relative_to_base(store, tmp_path):
    out = ok("bench", *CELLS, "sampler.steps=2,3", "seed=0", f"paths.store={store}", "report.bench.batch=2",
             "report.bench.repeats=2", "report.bench.threads=1")
    assert "timing pass: 1 cells against" in out and "FPS ÷ base" in out
    ok("report", *CELLS, "sampler.steps=2,3", "seed=0", f"paths.store={store}", f"paths.reports={tmp_path}")
    (folder,) = tmp_path.glob("quickstart@*")
    md = (folder / "report.md").read_text()
    assert "FPS from the timing pass" in md and "on the same 2 videos" in md and "median of 2 repeats" in md
    assert ", 1 thread, " in md  # report.bench.threads reached the pass and its record
    retimed = ok("report", *CELLS, "sampler.steps=2,3", "seed=0", f"paths.store={store}", "report.timing=true",
                 "report.bench.batch=1", "report.bench.repeats=3", f"paths.reports={tmp_path / 'again'}")
    assert "timing pass: 1 cells" in retimed  # report.timing=true runs the pass before the report
    (again,) = (tmp_path / "again").glob("quickstart@*/report.md")
    assert "on the same 1 video," in again.read_text() and "median of 3 repeats" in again.read_text()
    csv = pd.read_csv(folder / "report.csv").set_index(["sampler.steps", "metric"])["mean"]
    assert csv[(2, "timing.fps_vs_base")] == 1.0 and 0 < csv[(3, "timing.fps_vs_base")] < 5
    paired = pd.read_csv(folder / "paired.csv")
    assert set(paired["sampler.steps"]) == {3} and (paired["n_pairs"] == 4).all()
    assert {"figure-world_bench.total.png", "report.html", "report.tex"} <= {p.name for p in folder.iterdir()}


def test_leaderboard_ranks_with_intervals(store, tmp_path):
    out = ok("leaderboard", *CELLS, "sampler.steps=2,3", "seed=0", f"paths.store={store}", f"paths.reports={tmp_path}")
    (folder,) = tmp_path.glob("leaderboard_quickstart@*")
    assert str(folder) in out
    table = pd.read_csv(folder / "leaderboard.csv")
    assert sorted(table["rank"]) == [1, 2] and table["rank_interval"].str.fullmatch(r"\d–\d").all()
    assert {p.name for p in folder.iterdir()} == {"leaderboard.md", "leaderboard.csv", "leaderboard.html",
                                                  "leaderboard.tex"}


def test_a_leaderboard_over_incomparable_cells_is_refused(store, tmp_path):
    line = refused("leaderboard", *CELLS, "sampler.steps=2", "seed=0,1", f"paths.store={store}",
                   f"paths.reports={tmp_path}")
    assert "cannot rank" in line and "seeds differ" in line and "seed=1" in line and "seed=0" in line
    assert not any(tmp_path.iterdir())


def test_a_baseline_matching_several_cells_or_none_is_refused(store, tmp_path):
    several = refused("report", *CELLS, "sampler.steps=2,3", "seed=0,1", f"paths.store={store}",
                      f"paths.reports={tmp_path}")
    assert "matches 2 cells" in several and "seed=0" in several and "seed=1" in several
    assert "report.baseline='sampler.steps=2 seed=0'" in several
    none = refused("report", *fast_with(["report.baseline='sampler.steps=7'"], CELLS), "sampler.steps=2,3", "seed=0",
                   f"paths.store={store}", f"paths.reports={tmp_path}")
    assert "baseline cell" in none and "missing" in none and "refinery sweep" in none
    assert not any(tmp_path.iterdir())


def test_a_metric_with_no_values_is_refused(tmp_path):
    one_prompt = [*FAST, "suite.prompts=[a red circle bouncing]", f"paths.store={tmp_path / 'store'}"]
    ok("run", *one_prompt)
    line = refused("report", *one_prompt, "report.metrics=[world_bench.multiple_objects]",
                   f"paths.reports={tmp_path / 'reports'}")
    assert "'world_bench.multiple_objects' has no values" in line and "drop it from report.metrics" in line
    assert not (tmp_path / "reports").exists()
