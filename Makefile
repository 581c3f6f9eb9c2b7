# The two commands of the README:  `make demo`  (the main job: suite quick + its report)  and  `make test`.
# Each creates the virtual environment on first use; nothing is installed globally.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch and torchvision are pinned to the builds this project is tested with (they install from the
# local wheel cache where a machine has one; elsewhere from PyPI).
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-all bench lint clean

$(BIN)/.installed: pyproject.toml examples/adaptconv-gated-op/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' -e examples/adaptconv-gated-op
	touch $@

# The main job: every operator on built-in data (suites/quick.yaml, local executor), then the report.
# The report is written even when a trial failed (it lists the failure); the exit status is the run's.
demo: $(BIN)/.installed
	$(BIN)/adaptconv ops
	status=0; $(BIN)/adaptconv run quick || status=$$?; \
	$(BIN)/adaptconv report quick && exit $$status

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

test-all: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m ""

# Style and types: ruff's lint rules and formatter, mypy on the interface modules (pyproject.toml says which).
lint: $(BIN)/.installed
	$(BIN)/ruff check adaptconv tests benchmarks examples
	$(BIN)/ruff format --check adaptconv tests benchmarks examples
	$(BIN)/mypy

bench: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m benchmark benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
