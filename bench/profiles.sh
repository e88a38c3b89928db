#!/usr/bin/env bash
# Acceptance profiles x schemes on one BEIR set (issue 25's evidence): one evaluate per scheme, sequential, one
# shared embedding cache (the fp32 baseline is encoded once), then the report's decision matrix.
#   bash bench/profiles.sh DATA_DIR OUT_DIR [CATEGORY_FIELD]
#   e.g. bash bench/profiles.sh ../shared/data/medquad bench/results/profiles-medquad metadata.qtype
# A finished scheme (its results.json exists) is skipped, so the same command resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=$1; OUT=$2; FIELD=${3:-}  # DATA as given (relative to the repo root, e.g. ../shared/data/scifact)
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
common=(data=beir "data.path=$DATA" data.split=test logger=none "cache.dir=$OUT/cache")
[ -n "$FIELD" ] && common+=("data.query_category_field=$FIELD")
run() {  # NAME OVERRIDES...
    local name=$1; shift
    [ -f "$OUT/$name/results.json" ] && { echo "== $name: done already"; return; }
    echo "== $name: $*"
    HF_HUB_OFFLINE=1 $PY evaluate.py "${common[@]}" "$@" "hydra.run.dir=$OUT/$name" 2>&1 | grep -E "profile |nDCG@10|error" || true
}
run bf16 quant=bf16
run bnb-int8 quant=bnb_int8
run bnb-nf4 quant=bnb_nf4
run nf4-g64-emb quant=nf quant.bits=4 quant.group_size=64 quant.embeddings=true
run openvino-int8 runtime=openvino runtime.quantize=int8
run onnx-dynamic-int8 runtime=onnx runtime.quantize=dynamic_int8
# the 3-bit recipes that pass the 0.01 gate on MedQuAD (docs/RESULTS.md, issue 14 frontier), and the 2.5-bit mix;
# quant=auto reads the SciFact train-query scan (dev queries, never a test set)
G=(quant.method=gptq quant.act_order=true)
SCAN=bench/results/frontier-scifact/scan-nf-g64/sensitivity.json
run gptq-nf3-g64-act-c512-refine300 quant=nf quant.bits=3 quant.group_size=64 "${G[@]}" \
    quant.calibration_texts=512 quant.refine_steps=300
run auto-3.0-nfch-c512-refine300 quant=auto quant.target_bits=3.0 "quant.sensitivity=$SCAN" \
    "quant.grid={name:nf,granularity:channel}" "${G[@]}" quant.calibration_texts=512 quant.refine_steps=300
run auto-2.5-kmeansch quant=auto quant.target_bits=2.5 "quant.sensitivity=$SCAN" \
    "quant.grid={name:kmeans,granularity:channel}" "${G[@]}" quant.calibration_texts=256
HF_HUB_OFFLINE=1 $PY -m medret.report "$OUT" --out "$OUT/report" >/dev/null
echo "== decision matrix: $OUT/report/decision_matrix.md"
