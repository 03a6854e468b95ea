#!/usr/bin/env bash
# Qwen2.5-Coder-0.5B-Instruct heads, same recipe as scripts/smollm2_heads.sh (CPU, one core per job).
# Every step resumes (distillation skips answered prompts, extraction skips complete shards, training
# resumes from its last complete checkpoint).
#
#   bash scripts/qwen_heads.sh distill    # self-distillation of ShareGPT first turns 0-2399 (stop any time)
#   bash scripts/qwen_heads.sh features   # offline bf16 target features (raw ShareGPT + distilled answers)
#   bash scripts/qwen_heads.sh main       # EAGLE-2 and FSPAD heads in parallel, then the PosS-2 head
#
# Session 3 budget (the shipped heads): features of 653 distilled answers + 904 raw ShareGPT first turns
# (~13 min, both extractions in parallel); EAGLE-2 1200 steps (~1 s/step) and FSPAD 1200 steps (~1.6 s/step)
# in parallel; PosS 300 unrolled steps (~7-9 s/step). Shipped with scripts/finalize_heads.py --int8.
set -euo pipefail
STEP=${1:-all}
DISTILLED=${DISTILLED:-653}
DATA=data/qwen-coder-0.5b/distilled.jsonl
T=(--target qwen-coder-0.5b --target_dtype bfloat16)

if [[ $STEP == distill ]]; then
  mkdir -p runs/qwen-data && cp -n $DATA runs/qwen-data/distilled.jsonl || true
  fspad-hf prepare "${T[@]}" --max_conversations 2400 --max_turns 1 --regenerate --batch_size 16 \
    --max_new_tokens 256 --max_prompt_tokens 384 --output_dir runs/qwen-data
  mkdir -p "$(dirname $DATA)" && cp runs/qwen-data/distilled.jsonl $DATA
fi

FEATS=runs/qwen-feat-sharegpt/features,runs/qwen-feat-distilled/features
if [[ $STEP == features ]]; then
  PREP=("${T[@]}" --max_length 448 --features)
  fspad-hf prepare "${PREP[@]}" --data sharegpt:2400-3400 --max_turns 1 --output_dir runs/qwen-feat-sharegpt
  fspad-hf prepare "${PREP[@]}" --data $DATA:0-$DISTILLED --output_dir runs/qwen-feat-distilled
fi

SAVE_STEPS=100
source "$(dirname "$0")/head_recipe.sh"
if [[ $STEP == main || $STEP == all ]]; then
  train eagle2 runs/qwen-eagle2 ${MAIN_STEPS:-1200} &
  train fspad runs/qwen-fspad ${MAIN_STEPS:-1200} &
  wait
  train fspad runs/qwen-poss ${POSS_STEPS:-300} --num_draft_layers 2 --positions_per_layer 2 --unroll_steps 3 \
    --init_from runs/qwen-fspad/final --warmup_steps 20
fi
