# Two commands on a fresh machine: `make bench` (the main job) and `make test`.
# Each creates .venv and installs what it needs; torch is pinned here, ranged in pyproject.toml.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
TORCH  := torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed
PLUGINS := $(wildcard plugins/*/pyproject.toml)

.PHONY: bench test lint install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml $(PLUGINS) | $(PY)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev]' $(foreach p,$(PLUGINS),-e $(dir $(p)))
	touch $@

install: $(STAMP)

bench: $(STAMP)
	$(VENV)/bin/flowkit bench --suite quick

test: $(STAMP)
	$(PY) -m pytest -q tests $(wildcard plugins/*/tests)

lint: $(STAMP)
	$(PY) -m ruff check flowkit tests plugins benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
