#!/usr/bin/env bash
# all-mpnet-base-v2 (model=mpnet, BERT-base size) on this machine, issue 26's evidence; needs `make models`.
#   bash bench/mpnet.sh [OUT_DIR]      (default bench/results/mpnet; a finished step is skipped: it resumes)
# 1. fp32 on SciFact test: the published MTEB nDCG@10 is 0.6557.
# 2. Speed: OpenVINO int8 vs SentenceTransformer fp32, paired in one process (bench/runtime_speed.py), 200 docs.
# 3. Cost at this size: GPTQ nf3 g64 act-order over 256 corpus texts + 20 refinement steps on a 600-note synthetic
#    set (quantize seconds from results.json, peak RSS from /usr/bin/time).
# 4. OpenVINO int8 (bf16 float ops) on SciFact test: quality of the deployable int8 graph.
# 5. The frontier rows on SciFact test (each re-encodes the corpus: ~10-30 min here), cheapest first; the fp32
#    baseline comes from step 1's cache.
# 6. The sensitivity scan's cost at this size: a two-point slice (one linear, 2 and 3 bits), its seconds per point.
# 7. quant=auto 3.0 from MPNet's own fidelity-only scan (below).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/results/mpnet}
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"
E=("$PY" evaluate.py model=mpnet logger=none "cache.dir=$OUT/cache")
S=(data=beir data.path=../shared/data/scifact data.split=test)
run() {  # NAME OVERRIDES...
    local name=$1; shift
    [ -f "$OUT/$name/results.json" ] && { echo "== $name: done already"; return; }
    echo "== $name: $*"
    /usr/bin/time -v -o "$OUT/$name.time" "${E[@]}" "$@" "hydra.run.dir=$OUT/$name" 2>&1 | grep -E "nDCG@10|error" || true
    grep -E "Maximum resident|Elapsed" "$OUT/$name.time"
}
# quality first (its figures do not depend on what else runs), then the timed steps, then OpenVINO's quality
run scifact-fp32 "${S[@]}"
[ -f "$OUT/speed.json" ] || $PY bench/runtime_speed.py --model parts://all-mpnet-base-v2 --max-length 384 \
    --docs 200 --repeats 2 --threads 2 --only openvino/int8/bf16 openvino/int8 --out "$OUT/speed.json"
run synthetic600-gptq-nf3-refine20 data=synthetic data.num_records=600 data.num_queries=60 quant=nf quant.bits=3 \
    quant.group_size=64 quant.method=gptq quant.act_order=true quant.calibration_texts=256 quant.refine_steps=20
run scifact-openvino-int8-bf16 "${S[@]}" runtime=openvino runtime.quantize=int8 runtime.precision=bf16
run scifact-onnx-dynamic-int8 "${S[@]}" runtime=onnx runtime.quantize=dynamic_int8
# no int8 at all: the fp32 graph with bf16 float ops (200 docs: cosine to fp32 0.99998); speed paired as in step 2
run scifact-openvino-bf16 "${S[@]}" runtime=openvino runtime.precision=bf16
[ -f "$OUT/speed-bf16.json" ] || $PY bench/runtime_speed.py --model parts://all-mpnet-base-v2 --max-length 384 \
    --docs 200 --repeats 2 --threads 2 --only openvino/none/bf16 --out "$OUT/speed-bf16.json"
# MiniLM's 3-bit recipe with MPNet's smaller refinement lr (1e-3 diverged, step 3) and fewer texts/steps (CPU time)
run scifact-gptq-nf3-g64-act-c256-refine50-lr1e-4 "${S[@]}" quant=nf quant.bits=3 quant.group_size=64 \
    quant.method=gptq quant.act_order=true quant.calibration_texts=256 quant.refine_steps=50 quant.refine_lr=1e-4
# int8 with the FFN down-projections in float (runtime.float_down_proj; 200 docs: OpenVINO cosine to fp32 0.985 ->
# 0.994, ONNX dynamic 0.868 -> 0.995; NNCF's SmoothQuant alpha 0.5, 1.0 or off were all worse than its 0.95)
run scifact-openvino-int8-bf16-float-down-proj "${S[@]}" runtime=openvino runtime.quantize=int8 \
    runtime.precision=bf16 runtime.float_down_proj=true
[ -f "$OUT/speed-int8.json" ] || $PY bench/runtime_speed.py --model parts://all-mpnet-base-v2 --max-length 384 \
    --docs 200 --repeats 2 --threads 2 --cache "$OUT/cache/speed" --out "$OUT/speed-int8.json" \
    --only openvino/int8+float_down_proj/bf16
# medret's packed 4-bit weights (and table), decoded, served by the OpenVINO graph with bf16 float ops (the
# "simulated" runtime): 5x faster to encode here than torch fp32, and the bf16 graph alone keeps 0.6557
run scifact-nf4-g64-emb-openvino-bf16 "${S[@]}" quant=nf quant.bits=4 quant.group_size=64 quant.embeddings=true \
    runtime=openvino runtime.precision=bf16
if [ ! -f "$OUT/scan-slice/sensitivity.json" ]; then
    /usr/bin/time -v -o "$OUT/scan-slice.time" "$PY" -m medret.sensitivity model=mpnet logger=none data=beir \
        data.path=../shared/data/scifact quant=nf quant.group_size=64 "scan.bits=[2,3]" \
        "scan.layers=[*layer.0.attention.attn.q]" "hydra.run.dir=$OUT/scan-slice" 2>&1 | tail -2
fi
run scifact-onnx-dynamic-int8-float-down-proj "${S[@]}" runtime=onnx runtime.quantize=dynamic_int8 \
    runtime.float_down_proj=true
run scifact-bf16 "${S[@]}" quant=bf16
run scifact-bnb-int8 "${S[@]}" quant=bnb_int8
# 7. quant=auto 3.0 from MPNet's own scan (its linears are not MiniLM's): fidelity alone (scan.ndcg=false, the
#    measure quant=auto reads by default) over 32 corpus texts (on MiniLM the
#    choice equals a 256-text scan's, Spearman 0.9996), widths 2/3/4 on MiniLM's scan grid (nf g64), so the
#    216 points fit a CPU session (the nDCG measure costs 277 s a point here); then MiniLM's 3.0 recipe on the nf
#    per-channel grid with the 3-bit row's GPTQ + refinement settings, served as the nf rows are
SCAN=$OUT/scan-nf-g64-fidelity32
if [ ! -f "$SCAN/sensitivity.json" ]; then
    /usr/bin/time -v -o "$SCAN.time" "$PY" -m medret.sensitivity model=mpnet logger=none data=beir \
        data.path=../shared/data/scifact data.split=train quant=nf quant.group_size=64 "scan.bits=[2,3,4]" \
        scan.ndcg=false scan.fidelity_texts=32 "cache.dir=$OUT/cache" "hydra.run.dir=$SCAN" 2>&1 | tail -2
fi
run scifact-auto-3.0-nfch-gptq-c256-refine50-lr1e-4-openvino-bf16 "${S[@]}" quant=auto quant.target_bits=3.0 \
    "quant.sensitivity=$SCAN/sensitivity.json" "quant.grid={name:nf,granularity:channel}" quant.method=gptq \
    quant.act_order=true quant.calibration_texts=256 quant.refine_steps=50 quant.refine_lr=1e-4 \
    runtime=openvino runtime.precision=bf16
