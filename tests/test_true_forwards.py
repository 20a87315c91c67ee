"""Beside the paper's ΔNFE, the report counts every extra forward pass, KV-cache passes included
(ledger: nfe + cache_passes): through the whole path on the Self-Forcing schedule, InitNoiseRefiner makes
13 extra forwards per video where its ΔNFE says 7 (its refiner fills a cache of its own: 6 passes), and
AutoRefiner 48 where it says 21 (21 passes over the previous output and 6 into its history)."""
from pathlib import Path

import pandas as pd
import pytest

from harness.experiment.plans import compose
from harness.experiment.pipeline import generate, open_store, resolve_run, score
from harness.store.cells import CellRef
from harness.report.write import write_report
from test_compute_columns import SELF_FORCING

pytestmark = pytest.mark.slow  # the fixture generates and scores cells of the refiners

EXPECTED = {"init_noise_refiner": (7, 13), "autorefiner": (21, 48)}  # (ΔNFE, Δforwards) per video


@pytest.fixture(scope="module")
def overheads(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("forwards")
    refs = []
    for method in ["base", *EXPECTED]:
        cfg = compose([*SELF_FORCING, f"method={method}", f"paths.store={tmp / 'store'}", "~metric", "+metric.compute={}"])
        run = resolve_run(cfg)
        store = open_store(cfg)
        generate(run, store, progress=False)
        score(store.cell(run.key), cfg.metric, Path(cfg.paths.weights))
        refs.append(CellRef(run.key, {"method": method}))
    paths = write_report(store, refs, tmp / "report", "forwards", metrics=["overhead"], baseline=refs[0].key)
    return pd.read_csv(paths["report.csv"]).set_index(["method", "metric"])["mean"]


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_true_extra_forwards_beside_the_papers_delta_nfe(overheads, method):
    delta_nfe, forwards = EXPECTED[method]
    assert overheads[(method, "overhead.delta_nfe")] == delta_nfe
    assert overheads[(method, "overhead.delta_forwards")] == forwards
