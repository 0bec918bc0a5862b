# Two commands from a fresh clone: `make run` (train ETA and DIN on the bundled data) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ETAREC := $(VENV)/bin/etarec

.PHONY: run test install dev clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: the local CPU build; a bare range would pull a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[dev,plot]'
	# the scale extra (sharded tables): torch named again so that pip keeps the CPU build, then
	# torchrec without its dependencies, which would pull the GPU fbgemm build over fbgemm-gpu-cpu
	$(PY) -m pip install --quiet -e '.[scale]' torch==2.13.0
	$(PY) -m pip install --quiet --no-deps torchrec==1.8.0
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.dev

run: $(VENV)/.installed
	$(ETAREC) prepare --dataset ml-latest-small
	$(ETAREC) train --config configs/quickstart_eta.yaml --out runs/quickstart_eta
	$(ETAREC) train --config configs/quickstart_din.yaml --out runs/quickstart_din
	$(ETAREC) report runs/quickstart_eta runs/quickstart_din

test: $(VENV)/.dev
	$(PY) -m pytest -q

clean:
	rm -rf runs prepared .pytest_cache
