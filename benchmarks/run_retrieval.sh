#!/usr/bin/env bash
# Issue 12 item 1 check: the shipped FSPAD head with and without retrieval branches, head-free retrieval,
# and prompt lookup, against plain generate(), in one interleaved run per dtype (Spec-Bench, N per category).
#   bash benchmarks/run_retrieval.sh [DTYPE] [THREADS] [PER_CATEGORY] [MAX_NEW_TOKENS]
set -euo pipefail
DTYPE=${1:-float32}; THREADS=${2:-1}; PER=${3:-1}; N=${4:-64}
OUT=benchmarks/results/retrieval-smollm2-$DTYPE-${THREADS}t
HEADS=(--head static=smollm2-fspad@8,3,4 --head static+retrieval=smollm2-fspad@8,3,4+retrieval4)
if [[ ${ADAPTIVE:-0} == 1 ]]; then
  OUT=benchmarks/results/adaptive-smollm2-$DTYPE-${THREADS}t
  HEADS+=(--head adaptive+retrieval=smollm2-fspad@8,3,4+retrieval4+adaptive --head adaptive=smollm2-fspad@8,3,4+adaptive)
fi
OMP_NUM_THREADS=$THREADS fspad-hf bench --target smollm2 --dtype "$DTYPE" --threads "$THREADS" \
  --questions ../shared/data/spec_bench/question.jsonl --per_category "$PER" --max_new_tokens "$N" \
  "${HEADS[@]}" --retrieval 4 --pld_tokens 10 --no_plots --output "$OUT/results.json"
# Adaptive policy (opt-in) against the static tree, same run:
#   ADAPTIVE=1 bash benchmarks/run_retrieval.sh bfloat16 1 1 64
