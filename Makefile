# Two commands for a fresh machine: `make lab` and `make test` (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch==2.13.0 is the CPU wheel on this machine's disk; installing it first keeps
# pip from pulling a multi-GB CUDA build to satisfy the package's `torch>=2.2`.
TORCH ?= torch==2.13.0
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: setup lab run test test-fast bench lint clean

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
	$(PY) -m fedlearn_lab --out runs/latest

run: $(STAMP)
	$(PY) -m fedlearn_lab --out runs/latest

test: $(STAMP) /usr/bin/chromium
	$(PY) -m pytest tests

test-fast: $(STAMP)
	$(PY) -m pytest tests -m "not slow and not browser"

bench: $(STAMP)
	$(PY) benchmarks/bench_rounds.py

lint: $(STAMP)
	$(VENV)/bin/ruff check fedlearn_lab tests benchmarks

clean:
	rm -rf $(VENV) runs test-artifacts .pytest_cache
