# Two commands for a fresh machine: `make lab` and `make test` (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch==2.13.0 is the CPU wheel on this machine's disk; installing it first keeps
# pip from pulling a multi-GB CUDA build to satisfy the package's `torch>=2.2`.
TORCH ?= torch==2.13.0
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: setup lab run test test-fast bench lint notebooks voila clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,flower]"
	touch $@

# Debian's Chromium for the real-browser test (Playwright's own download fails here).
/usr/bin/chromium:
	$(SUDO) apt-get update -q
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/04_playground.ipynb --ServerApp.ip=127.0.0.1 $(ROOT_FLAG)

run: $(STAMP)
	$(PY) -m fedlearn_lab --out runs/latest

# Unit tests, the lessons under nbval (their CHECK_OUTPUT cells and asserts), and the
# real-browser test of the playground (JupyterLab + Chromium, marker `browser`).
test: $(STAMP) /usr/bin/chromium
	$(VENV)/bin/ruff check fedlearn_lab tests benchmarks examples notebooks/refresh.py
	$(PY) -m pytest tests notebooks --nbval-lax --nbval-current-env

test-fast: $(STAMP)
	$(PY) -m pytest tests -m "not slow and not browser and not flower"

bench: $(STAMP)
	$(PY) benchmarks/bench_rounds.py

# Re-execute the lessons in place after changing them or the package.
notebooks: $(STAMP)
	$(PY) notebooks/refresh.py

# The playground as a standalone page (no code cells), on http://127.0.0.1:8866
voila: $(STAMP)
	$(VENV)/bin/voila notebooks/04_playground.ipynb --no-browser --Voila.ip=127.0.0.1

lint: $(STAMP)
	$(VENV)/bin/ruff check fedlearn_lab tests benchmarks examples notebooks/refresh.py

clean:
	rm -rf $(VENV) runs test-artifacts .pytest_cache
