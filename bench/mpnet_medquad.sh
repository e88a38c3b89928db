#!/usr/bin/env bash
# all-mpnet-base-v2 (model=mpnet) on MedQuAD test (16,407 queries and answers), issue 26's frontier rows where the
# verdict can decide (SciFact's 300 queries left most rows inconclusive); needs `make models`.
#   bash bench/mpnet_medquad.sh [OUT_DIR]     (default bench/results/mpnet-medquad; a finished row is skipped)
# ONLY=REGEX runs only the rows whose name matches. One torch encode of the corpus is ~1 h on 2 cores; the encode
# cache is streamed, so a killed row resumes where it stopped. The fp32 baseline is encoded once (shared cache).
# Rows, most decisive first: fp32; the int8 graphs SciFact accepted (float down-projections); the 4-bit packed
# model served by OpenVINO bf16; MiniLM's 3-bit recipe at MPNet's refinement lr, served the same way; torch bf16;
# bitsandbytes int8; quant=auto 3.0 (SCAN=its scan's sensitivity.json); last, the 3-bit recipe in torch.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/results/mpnet-medquad}
PY=${PYTHON:-.venv/bin/python}
ONLY=${ONLY:-.}
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"
E=("$PY" evaluate.py model=mpnet logger=none "cache.dir=$OUT/cache" data=beir data.path=../shared/data/medquad
    data.split=test)
run() {  # NAME OVERRIDES...
    local name=$1; shift
    [[ $name =~ $ONLY ]] || return 0
    [ -f "$OUT/$name/results.json" ] && { echo "== $name: done already"; return; }
    echo "== $name: $*"
    /usr/bin/time -v -o "$OUT/$name.time" "${E[@]}" "$@" "hydra.run.dir=$OUT/$name" 2>&1 | grep -E "nDCG@10|error" || true
    grep -E "Maximum resident|Elapsed" "$OUT/$name.time"
}
run medquad-fp32
run medquad-openvino-int8-bf16-float-down-proj runtime=openvino runtime.quantize=int8 runtime.precision=bf16 \
    runtime.float_down_proj=true
run medquad-onnx-dynamic-int8-float-down-proj runtime=onnx runtime.quantize=dynamic_int8 runtime.float_down_proj=true
run medquad-nf4-g64-emb-openvino-bf16 quant=nf quant.bits=4 quant.group_size=64 quant.embeddings=true \
    runtime=openvino runtime.precision=bf16
# served by the OpenVINO bf16 graph as the nf4 row is: a ~15-minute encode against torch's ~70
run medquad-gptq-nf3-g64-act-c256-refine50-lr1e-4-openvino-bf16 quant=nf quant.bits=3 quant.group_size=64 \
    quant.method=gptq quant.act_order=true quant.calibration_texts=256 quant.refine_steps=50 quant.refine_lr=1e-4 \
    runtime=openvino runtime.precision=bf16
run medquad-openvino-int8-bf16 runtime=openvino runtime.quantize=int8 runtime.precision=bf16
run medquad-bf16 quant=bf16
run medquad-bnb-int8 quant=bnb_int8
# quant=auto 3.0 from MPNet's own scan on SciFact (bench/mpnet.sh step 7; nothing of MedQuAD seen), as on SciFact
run medquad-auto-3.0-nfch-gptq-c256-refine50-lr1e-4-openvino-bf16 quant=auto quant.target_bits=3.0 \
    "quant.sensitivity=${SCAN:-bench/results/mpnet/scan-nf-g64-fidelity32/sensitivity.json}" \
    "quant.grid={name:nf,granularity:channel}" quant.method=gptq quant.act_order=true quant.calibration_texts=256 \
    quant.refine_steps=50 quant.refine_lr=1e-4 runtime=openvino runtime.precision=bf16
# the 3-bit recipe in torch (optional: the OpenVINO-served row decides; GPTQ + refinement redone, ~20 min)
run medquad-gptq-nf3-g64-act-c256-refine50-lr1e-4 quant=nf quant.bits=3 quant.group_size=64 quant.method=gptq \
    quant.act_order=true quant.calibration_texts=256 quant.refine_steps=50 quant.refine_lr=1e-4
