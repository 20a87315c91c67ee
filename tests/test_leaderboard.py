"""The leaderboard: ranks with bootstrap intervals, paired Δ against the baseline, cells read across
stores, and a refusal naming the cells whenever two of them are not comparable."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from harness.errors import UsageError
from harness.report.leaderboard import Stores, check_comparable, write_leaderboard
from harness.report.stats import holm, paired_difference, rank_intervals
from harness.store.cells import Store
from harness.store.files import host_tag
from synthetic import PROMPTS, base_values, write_cell

N = len(PROMPTS) * 2


def swing() -> np.ndarray:
    """±0.01 by prompt: two rows with equal means that trade places across bootstrap draws."""
    return np.repeat([0.01, -0.01] * (len(PROMPTS) // 2), 2)


@pytest.fixture
def two_stores(tmp_path):
    """base and a clear leader in one store, two close followers in another."""
    first, second = Store(tmp_path / "first"), Store(tmp_path / "second")
    base = base_values(seed=11)
    refs = [write_cell(first, "base", {"m.score": base}),
            write_cell(first, "leader", {"m.score": base + 0.2}, nfe=140.0),
            write_cell(second, "follower_a", {"m.score": base + 0.05 + swing()}),
            write_cell(second, "follower_b", {"m.score": base + 0.05 - swing()})]
    return Stores([first, second]), refs, base


def test_a_killed_writers_temp_files_go_with_the_next_leaderboard_and_a_live_ones_stay(two_stores, tmp_path):
    stores, refs, _ = two_stores
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left, live = (out / f".leaderboard.html.{host_tag()}.{pid}.0a1b2c3d.tmp" for pid in (dead.pid, os.getpid()))
    for path in (left, live):
        path.write_bytes(b"half a file")
    write_leaderboard(stores, refs, out, "LB", ["m.score"], "base")
    assert not left.exists() and live.exists()


def test_ranks_intervals_and_paired_deltas(two_stores, tmp_path):
    stores, refs, base = two_stores
    paths = write_leaderboard(stores, refs, tmp_path / "out", "LB", ["m.score"], "base")
    assert sorted(p.name for p in paths.values()) == ["leaderboard.csv", "leaderboard.html", "leaderboard.md",
                                                      "leaderboard.tex"]
    table = pd.read_csv(paths["leaderboard.csv"]).set_index("cell")
    assert list(table.index) == ["leader", "follower_a", "follower_b", "base"]  # by rank
    expected = rank_intervals(np.stack([base, base + 0.2, base + 0.05 + swing(), base + 0.05 - swing()]),
                              np.repeat(PROMPTS, 2), True)
    assert [(r.rank, f"{r.low}–{r.high}") for r in expected] == \
        [(table.loc[c, "rank"], table.loc[c, "rank_interval"]) for c in ["base", "leader", "follower_a", "follower_b"]]
    assert table.loc["leader", "rank_interval"] == "1–1" and table.loc["follower_a", "rank_interval"] == "2–3"
    assert table.loc["leader", "m.score.delta"] == pytest.approx(0.2)
    rows = {"leader": base + 0.2, "follower_a": base + 0.05 + swing(), "follower_b": base + 0.05 - swing()}
    raw = [paired_difference(v, base, np.repeat(PROMPTS, 2)).p_value for v in rows.values()]
    assert table.loc[list(rows), "m.score.p_holm"].to_numpy() == pytest.approx(holm(raw))
    assert table.loc["leader", "overhead.delta_nfe"] == 112
    md = paths["leaderboard.md"].read_text()
    assert "| leader | 1 [1–1] | **" in md  # ahead of every other row: bold
    assert "| base | 4 [4–4] |" in md and "| baseline |" in md


def test_cells_come_from_the_first_store_that_holds_them_complete(tmp_path):
    first, second = Store(tmp_path / "a"), Store(tmp_path / "b")
    write_cell(first, "x", state="failed")
    write_cell(second, "x", {"m.score": base_values()})
    assert Stores([first, second]).cell("x").path == second.cell("x").path
    assert Stores([first, second]).cell("y").path == first.cell("y").path  # nowhere: reported missing


@pytest.mark.parametrize("change, field", [
    ({"suite_version": 2}, "suite.version"),
    ({"prompts": [p + "!" for p in PROMPTS]}, "suite.prompts"),
    ({"seeds": (0, 7)}, "seeds"),
    ({"digest": "d2"}, "weight digests"),
])
def test_incomparable_cells_are_refused_with_their_names(tmp_path, change, field):
    store = Store(tmp_path / "s")
    refs = [write_cell(store, "base", {"m.score": base_values()}),
            write_cell(store, "other", {"m.score": base_values()}, **change)]
    with pytest.raises(UsageError) as error:
        check_comparable(Stores([store]), refs)
    message = str(error.value)
    assert field in message and "other" in message and "base" in message and "\n" not in message
    with pytest.raises(UsageError):
        write_leaderboard(Stores([store]), refs, tmp_path / "out", "LB", ["m.score"], "base")
    assert not (tmp_path / "out").exists()
