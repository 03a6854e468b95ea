#!/usr/bin/env bash
# Tree-shape sweep for the SmolLM2 FSPAD head, one run per dtype (both run at once, one core each):
# 1 question per Spec-Bench category (13 questions, 21 turns), 64 new tokens, no prompt lookup.
# Each @T,D,K entry is the same head under another tree (total tokens, depth, top-k).
set -euo pipefail
HEAD=${HEAD:-runs/s2-smollm2-fspad/final}
COMMON=(--target smollm2 --threads 1 --pld_tokens 0 --per_category 1 --max_new_tokens 64 --no_plots
        --questions ../shared/data/spec_bench/question.jsonl)
fspad-hf bench "${COMMON[@]}" --dtype bfloat16 --output benchmarks/results/sweep-smollm2-bfloat16/results.json \
  --head t8d3k4=$HEAD@8,3,4 --head t12d4k4=$HEAD@12,4,4 --head t16d5k4=$HEAD@16,5,4 --head t24d5k8=$HEAD@24,5,8 \
  --head t16d4k8=$HEAD@16,4,8 > runs/sweep-bf16.log 2>&1 &
fspad-hf bench "${COMMON[@]}" --dtype float32 --output benchmarks/results/sweep-smollm2-float32/results.json \
  --head t4d2k2=$HEAD@4,2,2 --head t6d3k2=$HEAD@6,3,2 --head t8d3k4=$HEAD@8,3,4 --head t12d4k4=$HEAD@12,4,4 \
  --head t16d5k4=$HEAD@16,5,4 > runs/sweep-fp32.log 2>&1 &
wait
