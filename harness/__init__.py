"""Refinery's engine and plumbing. Importing it imports nothing heavy: the stages live in subpackages
(engine, store, experiment, report, models, train) and the two doors are harness.api and harness.cli."""

__version__ = "0.1.0"  # the release; recorded in every run spec and report
