"""Refinery's Python API (harness.api): the `refinery` commands as functions returning DataFrames.

    import refinery
    scores = refinery.run(["method=bon", "suite=world_smoke"])      # one cell, generated and scored
    summary = refinery.report(["experiment=quickstart"])             # report.csv as a DataFrame

Every function takes the command line's Hydra overrides; bad input raises refinery.UsageError.
"""
from harness import __version__
from harness.api import bench, export, leaderboard, plan_cost, plans, report, run, score, scores, sweep, verify
from harness.errors import UsageError
from harness.experiment.plans import CellPlan, compose

__all__ = ["run", "sweep", "score", "report", "bench", "leaderboard", "export", "verify", "plans", "plan_cost", "scores", "compose",
           "CellPlan", "UsageError", "__version__"]
