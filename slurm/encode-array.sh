#!/bin/bash
# Encode a large corpus as a SLURM job array (one task per cache shard), then index + search in a
# dependent job that finds every shard in the cache and encodes nothing:
#   slurm/encode-array.sh SHARDS [hydra overrides...]
#   e.g. slurm/encode-array.sh 100 data=records data.corpus_file=/data/notes.jsonl ... cache.shard_size=10000
# SHARDS = ceil(records / cache.shard_size). Both jobs must see the same cache.dir (a shared file system).
# Extra sbatch options (partition, gres, account) go in MEDRET_SBATCH_OPTS.
set -euo pipefail
SHARDS=$1; shift
PY=${MEDRET_PYTHON:-.venv/bin/python}
RUN_DIR=${MEDRET_RUN_DIR:-runs/encode-array-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RUN_DIR"
ARGS=$(printf ' %q' "$@")
array=$(sbatch --parsable ${MEDRET_SBATCH_OPTS:-} --job-name=medret-encode --array=0-$((SHARDS - 1)) --requeue \
  --output="$RUN_DIR/encode-%A_%a.out" \
  --wrap="HF_HUB_OFFLINE=1 WANDB_MODE=offline $PY evaluate.py logger=none hydra.run.dir=$RUN_DIR/shards \
cache.only_shard=\$SLURM_ARRAY_TASK_ID $ARGS")
search=$(sbatch --parsable ${MEDRET_SBATCH_OPTS:-} --job-name=medret-search --dependency=afterok:$array --requeue \
  --output="$RUN_DIR/search-%j.out" \
  --wrap="HF_HUB_OFFLINE=1 WANDB_MODE=offline $PY evaluate.py hydra.run.dir=$RUN_DIR/search $ARGS")
echo "encode array $array ($SHARDS tasks) -> index+search $search; results in $RUN_DIR/search/results.json"
