#!/usr/bin/env bash
# Small bf16 tree-shape sweep for the Qwen2.5-Coder-0.5B heads (session 3): the EAGLE-2 head (the first one
# trained) under 4 trees, 1 question from each of 6 categories, 48 new tokens, one core, no prompt lookup.
# Each @T,D,K entry is the same head under another tree (total tokens, depth, top-k).
set -euo pipefail
HEAD=${HEAD:-runs/qwen-eagle2/final}
fspad-hf bench --target qwen-coder-0.5b --threads 1 --pld_tokens 0 --per_category 1 --max_new_tokens 48 --no_plots \
  --categories coding,math_reasoning,writing,qa,summarization,translation \
  --questions ../shared/data/spec_bench/question.jsonl --dtype bfloat16 \
  --output benchmarks/results/sweep-qwen-bfloat16/results.json \
  --head t6d2k4=$HEAD@6,2,4 --head t8d3k4=$HEAD@8,3,4 --head t12d4k4=$HEAD@12,4,4 --head t16d5k4=$HEAD@16,5,4
