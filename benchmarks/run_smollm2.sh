#!/usr/bin/env bash
# Exact commands behind benchmarks/results/smollm2-{bfloat16,float32}/ (session 2). Both dtypes run at
# once, one core and one thread each; within a run all methods are interleaved question by question.
# 1 question per Spec-Bench category (13 questions, 21 turns) in both dtypes
# (session time ran short for more). 96 new tokens, greedy.
# Trees from the sweep (benchmarks/sweep_smollm2.sh, results in benchmarks/results/sweep-smollm2-*):
# bf16 8 tokens / depth 3 / top-k 4 (plus 6/2/4 for FSPAD); fp32 4 / 2 / 2 (multi-token fp32 forwards are
# expensive on this CPU, so the smallest tree wins).
set -euo pipefail
H=src/fspad_hf/heads
COMMON=(--target smollm2 --threads 1 --questions ../shared/data/spec_bench/question.jsonl --max_new_tokens 96)
fspad-hf bench "${COMMON[@]}" --per_category 1 --dtype bfloat16 --output benchmarks/results/smollm2-bfloat16/results.json \
  --head fspad=$H/smollm2-fspad@8,3,4 --head fspad-6=$H/smollm2-fspad@6,2,4 --head eagle2=$H/smollm2-eagle2@8,3,4 \
  --head poss=$H/smollm2-poss@8,3,4 &
fspad-hf bench "${COMMON[@]}" --per_category 1 --dtype float32 --output benchmarks/results/smollm2-float32/results.json \
  --head fspad=$H/smollm2-fspad@4,2,2 --head eagle2=$H/smollm2-eagle2@4,2,2 --head poss=$H/smollm2-poss@4,2,2 &
wait
