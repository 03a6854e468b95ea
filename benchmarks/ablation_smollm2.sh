#!/usr/bin/env bash
# FS / PAD ablation on SmolLM2 (issue 4): the four single-layer heads after the same 800 steps of the same
# recipe (scripts/smollm2_heads.sh; the EAGLE-2 and FSPAD runs' step-800 checkpoints), float32 so that
# every method decodes the very same text (greedy identity) and tau compares like with like.
# 1 question per Spec-Bench category (13 questions, 21 turns), 96 new tokens, tree 12 / 4 / 4, 1 thread.
set -euo pipefail
fspad-hf bench --target smollm2 --dtype float32 --threads 1 --pld_tokens 0 --per_category 1 --max_new_tokens 96 \
  --questions ../shared/data/spec_bench/question.jsonl --tree_total_tokens 12 --tree_depth 4 --tree_top_k 4 \
  --head eagle2=runs/s2-smollm2-eagle2/checkpoint-800 --head fs=runs/s2-smollm2-fs/final \
  --head pad=runs/s2-smollm2-pad/final --head fspad=runs/s2-smollm2-fspad/checkpoint-800 \
  --output benchmarks/results/ablation-smollm2-float32/results.json
