#!/usr/bin/env bash
# Larger bf16 check of the shipped heads (session 3): 2 Spec-Bench questions per category (26 questions),
# 96 new tokens, greedy, the same trees as the main runs; SmolLM2 and Qwen at once, one core and one thread each.
set -euo pipefail
H=src/fspad_hf/heads
COMMON=(--threads 1 --questions ../shared/data/spec_bench/question.jsonl --per_category 2 --max_new_tokens 96 --dtype bfloat16)
fspad-hf bench "${COMMON[@]}" --target smollm2 --output benchmarks/results/smollm2-bfloat16-2pc/results.json \
  --head fspad=$H/smollm2-fspad@8,3,4 --head fspad-6=$H/smollm2-fspad@6,2,4 --head eagle2=$H/smollm2-eagle2@8,3,4 \
  --head poss=$H/smollm2-poss@8,3,4 > runs/bench-smollm2-2pc.log 2>&1 &
fspad-hf bench "${COMMON[@]}" --target qwen-coder-0.5b --output benchmarks/results/qwen-bfloat16-2pc/results.json \
  --head fspad=$H/qwen-coder-0.5b-fspad@8,3,4 --head eagle2=$H/qwen-coder-0.5b-eagle2@8,3,4 \
  --head poss=$H/qwen-coder-0.5b-poss@8,3,4 > runs/bench-qwen-2pc.log 2>&1 &
wait
