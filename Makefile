# Two entry points: `make evaluate` (install + default evaluate, offline) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medret-setup

.PHONY: setup evaluate test lint

setup: $(STAMP)

# CPU machines get the CPU torch wheel first so no CUDA build is pulled; GPU machines get faiss-gpu.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(PY) -m pip install -q -e '.[gpu,test]'; \
	else \
		$(PY) -m pip install -q torch==2.13.0 && $(PY) -m pip install -q -e '.[cpu,test]'; \
	fi
	touch $@

evaluate: setup
	HF_HUB_OFFLINE=1 $(PY) evaluate.py $(ARGS)

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
