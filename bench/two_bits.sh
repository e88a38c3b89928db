#!/usr/bin/env bash
# Issue 27's goal runs (MiniLM, MedQuAD test, 16,407 queries): one evaluate per row, sequential, one shared
# embedding cache (the fp32 baseline is encoded once), resumable (a row whose results.json exists is skipped).
#   bash bench/two_bits.sh [DATA_DIR] [OUT_DIR]     (defaults ../shared/data/medquad, bench/results/two-bits-medquad)
# SEED=N sets seed= (which calibration texts, which distillation texts and batches); ONLY=REGEX runs only the rows
# whose name matches; CACHE=DIR shares one embedding cache between OUT dirs. The SciFact seed rows:
#   for s in 0 1 2; do SEED=$s ONLY='^(auto-2.5-kmeansch|kmeansch2|auto-2.6-kmeansch-tiers432).*latent0.03' CACHE=OUT/cache bash bench/two_bits.sh ../shared/data/scifact OUT/seed$s; done
# and the exactly-2.0-bit recipe (row 13) the same way with ONLY='^kmeanst2-tuned-c512-distill1000-crop'.
# quant=auto reads the SciFact train-query scan (dev queries of another set, never a test set).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/medquad}; OUT=${2:-bench/results/two-bits-medquad}
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1
SEED=${SEED:-0}; ONLY=${ONLY:-.}; CACHE=${CACHE:-$OUT/cache}
mkdir -p "$OUT"
common=(data=beir "data.path=$DATA" data.split=test logger=none "cache.dir=$CACHE" "seed=$SEED")
run() {  # NAME OVERRIDES...
    local name=$1; shift
    [[ $name =~ $ONLY ]] || return 0
    [ -f "$OUT/$name/results.json" ] && { echo "== $name: done already"; return; }
    echo "== $name: $*"
    /usr/bin/time -v -o "$OUT/$name.time" "$PY" evaluate.py "${common[@]}" "$@" "hydra.run.dir=$OUT/$name" 2>&1 \
        | grep -E "nDCG@10|error" || true
    grep -E "Maximum resident|Elapsed" "$OUT/$name.time"
}
SCAN=bench/results/frontier-scifact/scan-nf-g64/sensitivity.json
G=(quant.method=gptq quant.act_order=true quant.calibration_texts=512)
# train=distill (codes may move; 2,048 corpus texts, 200 held out, never the queries), then its packed best_model
# evaluated by its folder: judged against the fp32 model it was made from
distill() {  # NAME TRAIN_OVERRIDES...
    local name=$1; shift
    [[ $name =~ $ONLY ]] || return 0
    if [ ! -f "$OUT/$name/train/train_results.json" ]; then
        echo "== $name (train.py): $*"
        /usr/bin/time -v -o "$OUT/$name-train.time" "$PY" train.py train=distill data=beir "data.path=$DATA" \
            data.split=test logger=none "seed=$SEED" "$@" "hydra.run.dir=$OUT/$name/train" 2>&1 | grep -E "distill:|error" || true
        grep -E "Maximum resident|Elapsed" "$OUT/$name-train.time"
    fi
    run "$name" "model.path=$OUT/$name/train/best_model"
}
# 1. 2.5 bits/param over the linears. The refined 3.0-bit recipe (nf per channel, 100.0% at 3.0 bits) at 2.5 bits;
#    then the k-means per channel grid (96.6% at 2.49 bits unrefined, docs/RESULTS.md) distilled, and refined
NF=(quant=auto "quant.sensitivity=$SCAN" "quant.grid={name:nf,granularity:channel}" "${G[@]}")
KM=(quant=auto "quant.sensitivity=$SCAN" "quant.grid={name:kmeans,granularity:channel}" "${G[@]}")
run auto-2.5-nfch-c512-refine300 "${NF[@]}" quant.target_bits=2.5 quant.refine_steps=300
distill auto-2.5-kmeansch-c512-distill300 "${KM[@]}" quant.target_bits=2.5 train.max_steps=300 \
    train.distill_latent_lr=0.001
# 2. The whole model under 8 MB: linears at 2.6 bits (k-means per channel mix, distilled) + the word-embedding table
#    in frequency tiers 4/3/2 bits (2% / 8% / 90% of rows by corpus token count, ~2.4 bits) + fp32 position
#    embeddings and LayerNorms (0.91 MB); the tiered table is the run's own (outside the linears' budget)
TIERS=(quant.embeddings=true "quant.embedding_bits=[4,3,2]" "quant.embedding_tiers=[0.02,0.1]")
distill auto-2.6-kmeansch-tiers432-c512-distill300 "${KM[@]}" quant.target_bits=2.6 "${TIERS[@]}" train.max_steps=300 \
    train.distill_latent_lr=0.001
# 3. 2 bits over the linears: k-means per channel, 2-bit codes everywhere (2.125 bits/param with the fp16 codebooks),
#    GPTQ act-order over 512 texts, distilled
distill kmeansch2-c512-distill300 quant=kmeans quant.bits=2 quant.granularity=channel "${G[@]}" train.max_steps=300 \
    train.distill_latent_lr=0.001
# 4. the same distillation with the latent weights moving 10x faster (train.distill_latent_lr=0.01; the default
#    0.001 moved 87 of 10.6M codes in 300 steps): whether moving the codes adds to fitting the floats
distill auto-2.5-kmeansch-c512-distill300-latent0.01 "${KM[@]}" quant.target_bits=2.5 train.max_steps=300 \
    train.distill_latent_lr=0.01
# ... and 3x that again (0.03): 10x moved 0.15% of the codes and lifted nDCG@10 97.3% -> 98.9% at the same held-out
#    teacher cosine
distill auto-2.5-kmeansch-c512-distill300-latent0.03 "${KM[@]}" quant.target_bits=2.5 train.max_steps=300 \
    train.distill_latent_lr=0.03
# ... and the whole-model row with the accepted row's latent lr
distill auto-2.6-kmeansch-tiers432-c512-distill300-latent0.03 "${KM[@]}" quant.target_bits=2.6 "${TIERS[@]}" \
    train.max_steps=300 train.distill_latent_lr=0.03
# ... and the 2-bit row at that latent lr
distill kmeansch2-c512-distill300-latent0.03 quant=kmeans quant.bits=2 quant.granularity=channel "${G[@]}" \
    train.max_steps=300 train.distill_latent_lr=0.03
# 5. refinement (stored floats only, 300 steps) instead of distillation, on the 2.5-bit k-means mix: what moving the
#    codes adds
run auto-2.5-kmeansch-c512-refine300 "${KM[@]}" quant.target_bits=2.5 quant.refine_steps=300
# 6. exactly 2 bits/param: one k-means codebook per matrix (granularity=tensor: 4 fp16 levels per layer, 2.0002
#    bits/param) instead of one per row (2.125), distilled like row 3 (the row stored as kmeanst2-c512-distill300-
#    latent0.03 ran before distillation tuned a whole-matrix codebook: its 4 levels stayed GPTQ's)
distill kmeanst2-tuned-c512-distill300-latent0.03 quant=kmeans quant.bits=2 quant.granularity=tensor "${G[@]}" \
    train.max_steps=300 train.distill_latent_lr=0.03
# 7. between the two: one codebook per 8 consecutive rows (granularity=rows, group_size=8; 2.016 bits/param)
distill kmeansrows8-c512-distill300-latent0.03 quant=kmeans quant.bits=2 quant.granularity=rows quant.group_size=8 \
    "${G[@]}" train.max_steps=300 train.distill_latent_lr=0.03
# 8. row 6 distilled twice as long (600 steps): its held-out teacher cosine was still rising at step 300
distill kmeanst2-tuned-c512-distill600-latent0.03 quant=kmeans quant.bits=2 quant.granularity=tensor "${G[@]}" \
    train.max_steps=600 train.distill_latent_lr=0.03
# 9. ... and 1,000 steps: 600 gave 96.2% with the held-out cosine still rising at the last step
distill kmeanst2-tuned-c512-distill1000-latent0.03 quant=kmeans quant.bits=2 quant.granularity=tensor "${G[@]}" \
    train.max_steps=1000 train.distill_latent_lr=0.03
# 10. ... and 2,000 steps: 1,000 gave 96.97% with the held-out cosine still rising at the last step
distill kmeanst2-tuned-c512-distill2000-latent0.03 quant=kmeans quant.bits=2 quant.granularity=tensor "${G[@]}" \
    train.max_steps=2000 train.distill_latent_lr=0.03
# 11. exactly-2-bit codes, one codebook per matrix, but per row on the 6 FFN down-projections (in_features 1,536:
#     a row's 4 fp16 levels cost 0.04 bits/param there, 0.17 on the 384-wide rows; 2.014 bits/param in all):
#     whether per-row codebooks buy their 3 points (97.2% at 2.12 against 94.3% at 2.0, 300 steps) where the
#     GELU outputs' outliers enter. `+` because Hydra adds keys to a typed mapping only with it.
distill kmeanst2-downch-c512-distill300-latent0.03 quant=kmeans quant.bits=2 quant.granularity=tensor \
    "+quant.overrides={encoder.layer.?.output.dense:{granularity:channel}}" "${G[@]}" train.max_steps=300 \
    train.distill_latent_lr=0.03
# 12. row 8 (600 steps) with half of each batch read as 4-16-word spans of its own texts (train.distill_crop=0.5):
#     at 2 bits the query embeddings lagged (cosine to fp32 0.83 against the documents' 0.94 after 1,000 steps, and
#     2,000 steps raised only the documents'); queries are short, the training texts were whole answers
distill kmeanst2-tuned-c512-distill600-crop0.5-latent0.03 quant=kmeans quant.bits=2 quant.granularity=tensor \
    "${G[@]}" train.max_steps=600 train.distill_latent_lr=0.03 train.distill_crop=0.5
# 13. row 12's cropping at row 9's 1,000 steps (sixth stop: 98.0%, against 96.97% uncropped; 600 cropped: 96.8%)
distill kmeanst2-tuned-c512-distill1000-crop0.5-latent0.03 quant=kmeans quant.bits=2 quant.granularity=tensor \
    "${G[@]}" train.max_steps=1000 train.distill_latent_lr=0.03 train.distill_crop=0.5
