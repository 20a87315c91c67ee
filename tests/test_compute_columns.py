"""The AutoRefiner paper's Table 2 compute columns, reproduced by the ledger through the whole path
(rollout -> store -> compute metric -> report), with the Self-Forcing schedule: 7 chunks of 3 latent
frames, 4 stochastic steps, 5 candidates; on the toy and on the tiny wan_causal backend."""
from pathlib import Path

import pandas as pd
import pytest

from harness.experiment.plans import compose
from harness.experiment.pipeline import generate, open_store, resolve_run, score
from harness.store.cells import CellRef
from harness.report.write import write_report

pytestmark = pytest.mark.slow  # each backend's fixture generates and scores a sweep of cells

SELF_FORCING = ["suite=world_smoke", "suite.prompts=[a red circle bouncing]", "samples_per_prompt=1",
                "model.num_chunks=7", "sampler=stochastic", "sampler.steps=4"]
TABLE_2 = {  # method: (ΔNFE per video, #Verify per chunk, ΔVAE per chunk)
    "bon": (112, 5, 4),
    "sop": (112, 20, 19),
}


@pytest.fixture(scope="module", params=["toy", "wan_tiny"])
def summary(tmp_path_factory, request):
    tmp = tmp_path_factory.mktemp("table2")
    refs = []
    for method in ["base", *TABLE_2]:
        cfg = compose([*SELF_FORCING, f"model={request.param}", f"method={method}", f"paths.store={tmp / 'store'}"])
        run = resolve_run(cfg)
        store = open_store(cfg)
        generate(run, store, progress=False)
        score(store.cell(run.key), cfg.metric, Path(cfg.paths.weights))
        refs.append(CellRef(run.key, {"method": method}))
    paths = write_report(store, refs, tmp / "report", "table 2", metrics=["overhead", "compute"],
                         baseline=refs[0].key)
    return pd.read_csv(paths["report.csv"]).set_index(["method", "metric"])["mean"]


@pytest.mark.parametrize("method", sorted(TABLE_2))
def test_search_methods_reproduce_table_2_compute_columns(summary, method):
    delta_nfe, verify, delta_vae = TABLE_2[method]
    assert summary[(method, "overhead.delta_nfe")] == delta_nfe
    assert summary[(method, "overhead.verify")] == verify
    assert summary[(method, "overhead.delta_vae")] == delta_vae


def test_base_has_no_overhead(summary):
    assert summary[("base", "compute.nfe")] == 28 and summary[("base", "compute.decodes")] == 7
    for column in ("overhead.delta_nfe", "overhead.verify", "overhead.delta_vae"):
        assert summary[("base", column)] == 0
