#!/usr/bin/env bash
# Exact commands behind benchmarks/results/qwen-{bfloat16,float32}/ (session 3): Qwen2.5-Coder-0.5B-Instruct,
# 1 question per Spec-Bench category (13 questions, 21 turns), greedy, one core and one thread per run; within a
# run all methods are interleaved question by question.
#   bash benchmarks/run_qwen.sh bf16   # 96 new tokens, tree 8/3/4 (benchmarks/sweep_qwen.sh: 6/2/4 ~ 8/3/4 > larger)
#   bash benchmarks/run_qwen.sh fp32   # 64 new tokens (fp32 Qwen is ~2x slower), tree 4/2/2 (the SmolLM2 fp32
#                                      # sweep's choice, not swept again for Qwen)
# Session 3 ran fp32 while the PosS head was still training on the other core, so fp32 covers EAGLE-2 and
# FSPAD, and `fp32-poss` adds the PosS head in its own run against its own baseline.
set -euo pipefail
H=${HEADS:-src/fspad_hf/heads}
COMMON=(--target qwen-coder-0.5b --threads 1 --questions ../shared/data/spec_bench/question.jsonl --per_category 1)
case ${1:-bf16} in
  bf16) fspad-hf bench "${COMMON[@]}" --dtype bfloat16 --max_new_tokens 96 --output benchmarks/results/qwen-bfloat16/results.json \
          --head fspad=$H/qwen-coder-0.5b-fspad@8,3,4 --head eagle2=$H/qwen-coder-0.5b-eagle2@8,3,4 \
          --head poss=$H/qwen-coder-0.5b-poss@8,3,4 ;;
  fp32) fspad-hf bench "${COMMON[@]}" --dtype float32 --max_new_tokens 64 --output benchmarks/results/qwen-float32/results.json \
          --head fspad=$H/qwen-coder-0.5b-fspad@4,2,2 --head eagle2=$H/qwen-coder-0.5b-eagle2@4,2,2 ;;
  fp32-poss) fspad-hf bench "${COMMON[@]}" --dtype float32 --max_new_tokens 64 --pld_tokens 0 \
          --output benchmarks/results/qwen-float32-poss/results.json --head poss=$H/qwen-coder-0.5b-poss@4,2,2 ;;
  *) echo "usage: $0 bf16|fp32|fp32-poss" >&2; exit 2 ;;
esac
