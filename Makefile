# Two entry points: `make evaluate` (install + default evaluate, offline) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medret-setup

.PHONY: setup evaluate test lint slurm-up

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

test: setup slurm-up
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

# A real single-node SLURM for the sweep tests (root + Debian's packages); without it they skip.
slurm-up:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		slurm/local-cluster.sh start || echo "warning: local SLURM did not start; SLURM tests will skip"; \
	else echo "note: not root or no apt-get: SLURM tests will skip"; fi

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
