"""CSV exports a spreadsheet opens as data (harness/report/exports.py): a text that a spreadsheet would
evaluate as a formula gets a leading single quote (OWASP's rule), numbers stay numbers, and reading
an export back gives the original texts; in report.csv, paired.csv and leaderboard.csv."""
import io

import numpy as np
import pandas as pd
import pytest

from conftest import FAST
from harness.cli import main
from harness.report.exports import FORMULA_STARTS, csv_bytes, neutralise, read_csv_export, restore
from harness.report.leaderboard import Stores, write_leaderboard
from harness.store.cells import Store
from synthetic import base_values, write_cell

HOSTILE = ["-2+3", "@A1+cmd", "=HYPERLINK(\"http://x\")", "+1+1", "\tcmd", "\rcmd", "'=already quoted",
           "''@twice", "plain", "", "a=-1"]


@pytest.mark.parametrize("text", HOSTILE)
def test_a_formula_like_text_is_quoted_and_reads_back_exactly(text):
    safe = neutralise(text)
    assert not safe.startswith(FORMULA_STARTS)  # what a spreadsheet sees first is never a formula start
    assert restore(safe) == text
    assert (safe != text) == (text.lstrip("'").startswith(FORMULA_STARTS))


@pytest.mark.parametrize("value", ["-0.5", "+3", "-1e-3", "-.25", -0.5, 3, None, float("nan")])
def test_numbers_stay_numbers(value):
    assert neutralise(value) is value


def test_a_frame_keeps_its_number_columns_and_quotes_its_texts(tmp_path):
    frame = pd.DataFrame({"label": ["-2+3", "@A1+cmd", "ok"], "delta": [-0.5, 0.25, -1e-9],
                          "n": [1, 2, 3], "=cmd": ["a", "b", "c"]})
    text = csv_bytes(frame).decode()
    assert text.splitlines()[:3] == ["label,delta,n,'=cmd", "'-2+3,-0.5,1,a", "'@A1+cmd,0.25,2,b"]
    raw = pd.read_csv(io.StringIO(text))
    assert raw.delta.dtype == np.float64 and raw.n.dtype == np.int64  # a spreadsheet reads numbers too
    (tmp_path / "x.csv").write_text(text)
    pd.testing.assert_frame_equal(read_csv_export(tmp_path / "x.csv"), frame)


def test_leaderboard_csv_quotes_labels(tmp_path):
    store = Store(tmp_path / "store")
    base = base_values(seed=3)
    refs = [write_cell(store, "base", {"m.score": base}), write_cell(store, "other", {"m.score": base - 0.1})]
    refs[0].labels, refs[1].labels = {"suite.name": "@SUM(A1)"}, {"suite.name": "-2+3"}
    paths = write_leaderboard(Stores([store]), refs, tmp_path / "out", "LB", ["m.score"], "base")
    raw = pd.read_csv(paths["leaderboard.csv"]).set_index("cell")
    assert raw.loc["base", "suite.name"] == "'@SUM(A1)" and raw.loc["other", "suite.name"] == "'-2+3"
    assert raw.loc["other", "m.score.delta"] == pytest.approx(-0.1)  # a negative number, as a number


@pytest.mark.slow  # a sweep of two tiny cells and their report, through the CLI in this process
def test_refinery_report_writes_hostile_labels_as_text(tmp_path, capsys):
    settings = [*FAST, "suite.name=-2+3,@A1+cmd", f"paths.store={tmp_path / 'store'}"]
    assert main(["sweep", *settings]) == 0
    assert main(["report", *settings, f"paths.reports={tmp_path}"]) == 0
    (folder,) = [p for p in tmp_path.iterdir() if p.name.startswith("adhoc@")]
    raw = pd.read_csv(folder / "report.csv")
    assert set(raw["suite.name"]) == {"'-2+3", "'@A1+cmd"}  # paired.csv goes through the same csv_bytes
    assert raw["mean"].dtype == np.float64 and raw["n"].dtype == np.int64
    assert set(read_csv_export(folder / "report.csv")["suite.name"]) == {"-2+3", "@A1+cmd"}
