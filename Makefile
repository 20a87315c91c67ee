# `make demo` and `make test` each build .venv from nothing when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-faults test-slurm install docs bench gpu-check train-world clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,docs]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/refinery sweep experiment=quickstart
	$(BIN)/refinery report experiment=quickstart
	$(BIN)/refinery sweep experiment=toy_models
	$(BIN)/refinery report experiment=toy_models

# On every core (pytest-xdist), a test file's tests on one worker: a module's fixtures (a generated sweep,
# a trained adapter, the one-node SLURM cluster) are built once, not once per worker. (xdist's loadgroup
# would group finer, but with pytest 9 it no longer reads the groups.) The 25 slowest tests are listed.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadfile --durations=25

# Without the tests marked slow (subprocess sweeps, SLURM, training, browser, kills).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n auto -m "not slow"

# Fault injection at every write of `run`, `score` and `report` (tests/faults.py): ENOSPC, EACCES or
# EROFS, and a kill, at each point in turn: 195 cases, 10 minutes on the loaded 2-core machine (RESULTS.md).
test-faults: $(STAMP)
	REFINERY_FAULTS=all $(BIN)/python -m pytest -q -n auto tests/test_faults.py

# The sweeps on a real one-node SLURM cluster alone (needs Debian's slurm-wlm and munge, as .ci/run installs).
test-slurm: $(STAMP)
	$(BIN)/python -m pytest -q tests/test_slurm.py

# The docs site (mkdocs.yml, docs/) into site/; --strict turns every warning (a broken link, a missing page) into an error.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# On a GPU machine, at most 10 minutes: full-size sampling, FPS and memory against the plan, bf16 vs fp32,
# shards and FSDP training where available (benchmarks/gpu_check.py); without a GPU it says so and exits 0.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py

train-world: $(STAMP)
	$(BIN)/refinery train-world

clean:
	rm -rf $(VENV) runs reports/*/ .pytest_cache site
