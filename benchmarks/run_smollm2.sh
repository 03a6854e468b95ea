#!/usr/bin/env bash
# Exact commands behind benchmarks/results/smollm2-*.{json,md,png} (session 1: 1 thread, 1 question per
# Spec-Bench category, 96 new tokens; the shipped heads' tree defaults T=12, depth 4, top-k 4).
set -euo pipefail
for dtype in bfloat16 float32; do
  fspad-hf bench --target smollm2 --dtype $dtype --threads 1 \
    --head fspad=src/fspad_hf/heads/smollm2-fspad --head eagle2=src/fspad_hf/heads/smollm2-eagle2 \
    --questions ../shared/data/spec_bench/question.jsonl --per_category 1 --max_new_tokens 96 \
    --output benchmarks/results/smollm2-$dtype/results.json
done
