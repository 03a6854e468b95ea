#!/usr/bin/env bash
# Exact commands behind the shipped SmolLM2-135M-Instruct heads (CPU, 2 cores, one core per job).
# Every step resumes: distillation skips conversations already in the JSONL, feature extraction skips
# complete shards, training resumes from its last complete checkpoint.
#
#   bash scripts/smollm2_heads.sh distill     # self-distillation (runs until stopped or 8000 prompts)
#   bash scripts/smollm2_heads.sh features    # offline bf16 target features of the three data parts
#   bash scripts/smollm2_heads.sh main        # EAGLE-2 and FSPAD heads (same data, steps, seed), in parallel
#   bash scripts/smollm2_heads.sh ablation    # FS-only and PAD-only heads (same recipe, ABLATION_STEPS)
#   bash scripts/smollm2_heads.sh poss        # PosS-2 head initialised from the FSPAD head, HASS-unrolled
#
# Session 2 budget (the shipped heads): distillation stopped at $DISTILLED answers; main heads 3000 steps
# each at ~1 s/step; ablation 800 steps each; PosS 500 unrolled steps (~3.5 s/step).
set -euo pipefail
STEP=${1:-all}
DISTILLED=${DISTILLED:-1500}
DATA=data/smollm2/distilled.jsonl

# 1. Self-distillation: SmolLM2 (bf16, greedy) answers the first user turn of ShareGPT conversations 0-7999
#    (never Spec-Bench, never the held-out conversations >= 17000). The committed JSONL holds what was
#    distilled so far; the job resumes from it (one core, niced: OMP_NUM_THREADS=1 nice taskset -c 1 ...).
if [[ $STEP == distill ]]; then
  mkdir -p runs/smollm2-data && cp -n $DATA runs/smollm2-data/distilled.jsonl || true
  fspad-hf prepare --target smollm2 --target_dtype bfloat16 --max_conversations ${DISTILL_CONVERSATIONS:-8000} --max_turns 1 --regenerate \
    --batch_size 16 --max_new_tokens 256 --max_prompt_tokens 384 --output_dir runs/smollm2-data
  cp runs/smollm2-data/distilled.jsonl $DATA
fi

# 2. Offline features (bf16 target features, 448 tokens max): raw ShareGPT first turns 2400-4399 (the head
#    still learns the target's own distribution: its soft labels come from the target's features) plus the
#    self-distilled answers in two parts (the second part was distilled while the first was extracted).
FEATS=runs/smollm2-feat-sharegpt/features,runs/smollm2-feat-distilled-a/features,runs/smollm2-feat-distilled-b/features
if [[ $STEP == features ]]; then
  PREP=(--target smollm2 --target_dtype bfloat16 --max_length 448 --features)
  fspad-hf prepare "${PREP[@]}" --data sharegpt:2400-4400 --max_turns 1 --output_dir runs/smollm2-feat-sharegpt
  fspad-hf prepare "${PREP[@]}" --data $DATA:0-1000 --output_dir runs/smollm2-feat-distilled-a
  fspad-hf prepare "${PREP[@]}" --data $DATA:1000-$DISTILLED --output_dir runs/smollm2-feat-distilled-b
fi

# 3. Heads (recipe in scripts/head_recipe.sh); the ablation compares the 800-step checkpoints of all four.
T=(--target smollm2 --target_dtype bfloat16)
SAVE_STEPS=200
source "$(dirname "$0")/head_recipe.sh"
if [[ $STEP == main || $STEP == all ]]; then
  train eagle2 runs/s2-smollm2-eagle2 ${MAIN_STEPS:-3000} &
  train fspad runs/s2-smollm2-fspad ${MAIN_STEPS:-3000} &
  wait
fi
if [[ $STEP == ablation || $STEP == all ]]; then
  train fs runs/s2-smollm2-fs ${ABLATION_STEPS:-800}
  train pad runs/s2-smollm2-pad ${ABLATION_STEPS:-800}
fi
# 4. PosS-2 (2 specialists: draft positions 1-2 and 3+), both initialised from the trained FSPAD head,
#    trained with 3 HASS unroll steps (positions 1-3).
if [[ $STEP == poss || $STEP == all ]]; then
  train fspad runs/s2-smollm2-poss ${POSS_STEPS:-500} --num_draft_layers 2 --positions_per_layer 2 --unroll_steps 3 \
    --init_from runs/s2-smollm2-fspad/final --warmup_steps 20
fi
