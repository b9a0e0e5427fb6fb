# Two commands on a fresh machine: `make bench` (the main job) and `make test`.
# Each creates .venv and installs what it needs; torch is pinned here, ranged in pyproject.toml.
# bench runs the quick suite's ten held-out digits on one worker process per core (one torch
# thread each; the bench's default executor, auto): small models on 2 cores go faster side
# by side than one at a time on two threads.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
TORCH  := torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed
# a second environment without torch: the onnxruntime scoring path is tested in it
RUNTIME    ?= .venv-runtime
RT_PY      := $(RUNTIME)/bin/python
RT_STAMP   := $(RUNTIME)/.installed
PLUGINS := $(wildcard plugins/*/pyproject.toml)

.PHONY: bench test lint install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml $(PLUGINS) | $(PY)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev,onnx,ray]' $(foreach p,$(PLUGINS),-e $(dir $(p)))
	touch $@

$(RT_STAMP): requirements-runtime.txt pyproject.toml
	$(PYTHON) -m venv $(RUNTIME)
	$(RT_PY) -m pip --disable-pip-version-check install -q -r requirements-runtime.txt
	$(RT_PY) -m pip --disable-pip-version-check install -q --no-deps -e .
	touch $@

install: $(STAMP)

bench: $(STAMP)
	$(VENV)/bin/flowkit bench --suite quick

test: $(STAMP) $(RT_STAMP)
	FLOWKIT_RUNTIME_PYTHON=$(RT_PY) $(PY) -m pytest -q tests $(wildcard plugins/*/tests)

lint: $(STAMP)
	$(PY) -m ruff check flowkit tests plugins benchmarks

clean:
	rm -rf $(VENV) $(RUNTIME) runs .pytest_cache
