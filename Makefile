# Slipstream: `make demo` and `make test` each set up the environment first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Python 3.12 from the image's pyenv; override with `make PYTHON=/path/to/python3.12`.
PYTHON ?= $(shell for p in python3.12 $$(ls -d $$HOME/.pyenv/versions/3.12*/bin/python3.12 /root/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null); do $$p -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && { echo $$p; break; }; done)
NP ?= 2
STAMP := $(VENV)/.installed
MPIRUN := $(VENV)/bin/mpirun

.PHONY: setup demo test test-serial test-mpi benchmark clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python 3.12 not found (set PYTHON=...)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[fem,ml,test]"
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/slipstream demo --out demo_out

test: setup test-serial test-mpi

test-serial: setup
	$(PY) -m pytest -q -p no:cacheprovider tests

# The MPI-marked tests again on 2 ranks; python -m mpi4py aborts all ranks when one fails.
test-mpi: setup
	$(MPIRUN) -n $(NP) $(PY) -m mpi4py -m pytest -q -p no:cacheprovider -m mpi tests

benchmark: setup
	$(PY) benchmarks/solver_throughput.py --out benchmarks/results/solver_throughput.json
	$(PY) benchmarks/campaign_throughput.py
	$(PY) benchmarks/fdm_throughput.py
	@if [ -d data/default.zarr ]; then $(PY) benchmarks/surrogate_accuracy_speed.py --store data/default.zarr; \
	else echo "surrogate benchmark skipped: make the default campaign's store data/default.zarr first (README)"; fi
	@if [ -d data/default.zarr ] && [ -d data/default_noaug ]; then \
	$(PY) benchmarks/surrogate_augmentation.py --store data/default.zarr --baseline data/default_noaug; \
	else echo "augmentation benchmark skipped: train data/default_noaug (the shipped config without augment) first (docs/benchmarks.md)"; fi
	$(PY) benchmarks/coupling_learned_update.py
	@if [ -d data/coarse4.zarr ] && [ -d data/coarse2.zarr ]; then $(PY) benchmarks/coupling_correction.py; \
	else echo "correction benchmark skipped: make data/coarse4.zarr and data/coarse2.zarr first (docs/coupling.md)"; fi
	@if [ -d data/inloop4.zarr ] && [ -d data/coarse4.zarr ] && [ -d data/coarse2.zarr ]; then \
	$(PY) benchmarks/coupling_inloop.py; \
	else echo "in-loop benchmark skipped: make data/inloop4.zarr, coarse4.zarr, coarse2.zarr first (docs/coupling.md)"; fi
	@if [ -d data/elastic.zarr ]; then $(PY) benchmarks/coupling_forecast.py; \
	else echo "forecast benchmark skipped: make data/elastic.zarr first (docs/coupling.md)"; fi

clean:
	rm -rf demo_out .pytest_cache
