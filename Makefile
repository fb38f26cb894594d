# Two commands on a fresh machine: `make demo` and `make test`. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
SYSTEM_STAMP := $(VENV)/.system-deps
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-fast lint bench bench-gpu soak install system-deps clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[local,test]'
	@rm -f $(VENV)/.installed-*; touch $@

# Debian packages used by the browser and Prometheus tests (root on this machine; skipped if present).
system-deps: $(SYSTEM_STAMP)

$(SYSTEM_STAMP):
	@mkdir -p $(VENV)
	@if ! command -v chromium >/dev/null || ! command -v promtool >/dev/null || ! command -v prometheus-alertmanager >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium prometheus prometheus-alertmanager >/dev/null \
	      || echo "warning: apt-get install failed; browser/Prometheus tests will skip"; \
	  else echo "warning: not root, cannot apt-get install chromium/prometheus; those tests will skip"; fi; \
	fi
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/moodwatch demo

# Lint and format check, and the import direction (workers -> pipelines -> models -> schemas; see pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

test: $(STAMP) system-deps lint
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not integration and not slow"

bench: $(STAMP)
	$(PY) -m workers.devstack.bench

# On a machine with an NVIDIA GPU (CUDA torch already in the venv); `make bench-gpu ARGS=--dry-run` on a CPU.
bench-gpu: $(STAMP)
	timeout 360 $(PY) -m workers.devstack.bench_gpu $(ARGS)

soak: $(STAMP)
	MOODWATCH_SOAK=1 $(PY) -m pytest -q -m slow tests/reliability

clean:
	rm -rf $(VENV) artifacts .pytest_cache
